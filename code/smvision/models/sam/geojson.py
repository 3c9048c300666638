"""Masks -> GeoJSON: one Feature per mask, its outline polygons with their holes.

Outlines are rasterio.features.shapes' (GDAL's polygonizer, run on the mask's bounding
box): exact pixel-edge outlines, 4-connected regions, holes kept, so a filled polygon
covers exactly the mask's pixels.
shapely simplifies them (Douglas-Peucker that keeps the topology valid, the tolerance in
pixels), maps them through the geotransform and orients the rings as RFC 7946 asks
(outer rings counterclockwise, holes clockwise, in the answer's coordinates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from smvision.geo import Georef, crs_urn


@dataclass(frozen=True)
class GeoJsonOptions:
    """How masks become GeoJSON: pixel coordinates (georef None) or map coordinates."""

    georef: Georef | None = None
    simplify_tolerance: float = 0.0  # pixels; 0: exact pixel-edge outlines


def mask_geometry(mask: np.ndarray, options: GeoJsonOptions) -> Any:
    """One (H, W) bool mask -> a shapely MultiPolygon (empty for an empty mask)."""
    from rasterio.features import shapes
    from shapely import MultiPolygon, affinity
    from shapely.geometry import shape
    from shapely.geometry.polygon import orient

    from affine import Affine

    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return MultiPolygon()
    # polygonize only the mask's bounding box (an object is often a small part of the image)
    top, left = int(rows[0]), int(columns[0])
    crop = np.ascontiguousarray(mask[top : rows[-1] + 1, left : columns[-1] + 1], dtype=bool)
    found = shapes(crop.view(np.uint8), mask=crop, connectivity=4, transform=Affine.translation(left, top))
    polygons = [shape(geometry) for geometry, _ in found]
    geometry = MultiPolygon(polygons)
    if options.simplify_tolerance > 0 and polygons:
        geometry = geometry.simplify(options.simplify_tolerance, preserve_topology=True)
    if options.georef is not None:
        geometry = affinity.affine_transform(geometry, options.georef.affine())
    parts = getattr(geometry, "geoms", [geometry])
    return MultiPolygon([orient(p, sign=1.0) for p in parts if not p.is_empty])


def _coordinates(geometry: Any) -> list:
    """A MultiPolygon's GeoJSON coordinates as lists (closed rings, [x, y] pairs)."""
    return [
        [np.asarray(ring.coords).tolist() for ring in (polygon.exterior, *polygon.interiors)]
        for polygon in geometry.geoms
    ]


def mask_features(masks: np.ndarray, options: GeoJsonOptions) -> list[dict[str, Any]]:
    """A GeoJSON Feature per mask: MultiPolygon geometry, properties {"mask_index": i}."""
    return [
        {
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": _coordinates(mask_geometry(mask, options))},
            "properties": {"mask_index": index},
        }
        for index, mask in enumerate(masks)
    ]


def feature_collection(
    found: list[dict[str, Any]], properties: Sequence[dict[str, Any]], options: GeoJsonOptions
) -> dict[str, Any]:
    """The FeatureCollection of features (from mask_features()), each given its extra properties.

    Map coordinates add "geotransform" (a foreign member) and, when the CRS is known, the
    "crs" member of GeoJSON 2008 ({"type": "name", "properties": {"name": URN}}) that GDAL,
    QGIS and geopandas read; RFC 7946 dropped it (its coordinates are WGS84 only), and the
    answer keeps the image's own CRS rather than reprojecting."""
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    georef = options.georef
    if georef is not None:
        if georef.crs is not None:
            collection["crs"] = {"type": "name", "properties": {"name": crs_urn(georef.crs)}}
        collection["geotransform"] = list(georef.geotransform)
    for feature, extra in zip(found, properties):
        feature["properties"].update(extra)
    collection["features"] = found
    return collection
