"""Georeferencing: a GDAL geotransform and a CRS, from a request or from a GeoTIFF's tags.

A geotransform is six numbers in GDAL order (c, a, b, f, d, e): the map point of pixel
corner (x, y) -- x to the right, y down, (0, 0) the top-left corner of the top-left
pixel -- is (c + a*x + b*y, f + d*x + e*y). A north-up raster has b = d = 0 and e < 0.

GeoTIFF georeferencing is read from the TIFF tags Pillow already parses when it opens
the file (no second reader, no pixels decoded): ModelPixelScaleTag (33550) with one
ModelTiepointTag (33922), or ModelTransformationTag (34264); the CRS is the EPSG code of
GeoKeyDirectoryTag (34735): ProjectedCSTypeGeoKey (3072), else GeographicTypeGeoKey
(2048). A raster that says PixelIsPoint (GTRasterTypeGeoKey 1025 = 2) is shifted by half
a pixel as GDAL does, so the geotransform always describes pixel corners. Several
tiepoints without a scale (ground control points) give no geotransform.

The images the models see are upright (EXIF / TIFF Orientation applied): a GeoTIFF's own
geotransform describes its stored raster, so upright() composes it with the orientation;
a geotransform given in a request describes the upright pixels the masks are in.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from smvision.errors import bad_request

MODEL_PIXEL_SCALE = 33550
MODEL_TIEPOINT = 33922
MODEL_TRANSFORMATION = 34264
GEO_KEY_DIRECTORY = 34735
ORIENTATION = 274
IMAGE_WIDTH = 256
IMAGE_LENGTH = 257

GT_MODEL_TYPE = 1024
GT_RASTER_TYPE = 1025
GEOGRAPHIC_TYPE = 2048
PROJECTED_CS_TYPE = 3072
RASTER_PIXEL_IS_POINT = 2
USER_DEFINED = 32767

_EPSG = re.compile(r"^(?:EPSG:|urn:ogc:def:crs:EPSG::)(\d{4,6})$", re.IGNORECASE)


@dataclass(frozen=True)
class Georef:
    """A geotransform (GDAL order) and, when known, the CRS as "EPSG:<code>"."""

    geotransform: tuple[float, float, float, float, float, float]
    crs: str | None = None

    def affine(self) -> tuple[float, float, float, float, float, float]:
        """The transform in shapely.affinity.affine_transform order [a, b, d, e, xoff, yoff]."""
        c, a, b, f, d, e = self.geotransform
        return (a, b, d, e, c, f)


def corners(geotransform: tuple[float, ...], size: tuple[int, int]) -> list[tuple[float, float]]:
    """The map points of the four corners of an image of size (H, W), each computed as
    shapely's affine_transform computes a vertex: (a*x + b*y) + c, (d*x + e*y) + f."""
    c, a, b, f, d, e = geotransform
    height, width = size
    return [(a * x + b * y + c, d * x + e * y + f) for x in (0, width) for y in (0, height)]


def finite_corners(geotransform: tuple[float, ...], size: tuple[int, int]) -> bool:
    """True when every pixel corner of an image of size (H, W) maps to finite numbers.

    The map point is linear in x and y and rounding is monotonic, so the four corners
    bound every vertex a mask can have: finite corners, finite GeoJSON."""
    return all(math.isfinite(v) for point in corners(geotransform, size) for v in point)


def parse_geotransform(
    value: Any, where: str, size: tuple[int, int] | None = None
) -> tuple[float, float, float, float, float, float]:
    """Six finite numbers with a non-zero determinant (a*e - b*d) that map the corners of
    an image of size (H, W), when given, to finite numbers; else a 400."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 6
        or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
    ):
        raise bad_request(
            f"{where}: 'geotransform' must be six numbers in GDAL order [x0, pixel width, row rotation, "
            f"y0, column rotation, pixel height], got {value!r}"[:300]
        )
    try:
        numbers = tuple(float(v) for v in value)
    except OverflowError:
        numbers = (math.inf,)
    if not all(math.isfinite(v) for v in numbers):
        raise bad_request(f"{where}: 'geotransform' must be six finite numbers, got {value!r}"[:300])
    _, a, b, _, d, e = numbers
    if a * e - b * d == 0:
        raise bad_request(f"{where}: 'geotransform' {list(numbers)} maps every pixel onto a line (a*e - b*d = 0)")
    if size is not None and not finite_corners(numbers, size):
        raise bad_request(f"{where}: 'geotransform' {list(numbers)} {_past_finite(size)}")
    return numbers  # type: ignore[return-value]


def check_image_georef(georef: Georef, size: tuple[int, int], where: str) -> None:
    """A 400 when an image's own georeferencing maps its corners (size (H, W)) past the
    largest finite number: its GeoJSON could not be written."""
    if not finite_corners(georef.geotransform, size):
        raise bad_request(
            f"{where}: the image's georeferencing is unusable: its geotransform {list(georef.geotransform)} "
            f"{_past_finite(size)}; give a 'geotransform' (six numbers, GDAL order) in the request"
        )


def _past_finite(size: tuple[int, int]) -> str:
    height, width = size
    return f"maps the image's corners ({width}x{height} pixels) past the largest finite number"


def parse_crs(value: Any, where: str) -> str:
    """"EPSG:<code>" from an integer code, "EPSG:<code>" or an OGC URN; else a 400."""
    if isinstance(value, int) and not isinstance(value, bool) and 1024 <= value <= 999999:
        return f"EPSG:{value}"
    match = _EPSG.match(value) if isinstance(value, str) else None
    if match is None:
        raise bad_request(f"{where}: 'crs' must be an EPSG code (32633, \"EPSG:32633\"), got {value!r}"[:300])
    return f"EPSG:{int(match.group(1))}"


def crs_urn(crs: str) -> str:
    """"EPSG:32633" -> "urn:ogc:def:crs:EPSG::32633" (the name GeoJSON's crs member uses)."""
    return "urn:ogc:def:crs:EPSG::" + crs.split(":", 1)[1]


def tiff_georef(image: Any) -> Georef | None:
    """The georeferencing of an opened Pillow TIFF image (its stored raster), or None.

    Reads only tags Pillow has parsed at open; never raises for odd tags (a TIFF whose
    georeferencing cannot be understood is an image without one). Numbers that are not
    finite are kept: check_image_georef refuses them where they would be used."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    try:
        keys = _geo_keys(tags.get(GEO_KEY_DIRECTORY))
        geotransform = _tiff_geotransform(tags)
        if geotransform is None:
            return None
        if keys.get(GT_RASTER_TYPE) == RASTER_PIXEL_IS_POINT:
            c, a, b, f, d, e = geotransform
            geotransform = (c - 0.5 * (a + b), a, b, f - 0.5 * (d + e), d, e)
        _, a, b, _, d, e = geotransform
        if a * e - b * d == 0:
            return None
        return Georef(geotransform, _epsg(keys))
    except (TypeError, ValueError, IndexError):
        return None


def _tiff_geotransform(tags: Any) -> tuple[float, ...] | None:
    matrix = tags.get(MODEL_TRANSFORMATION)
    if matrix is not None and len(matrix) == 16:
        m = [float(v) for v in matrix]
        return (m[3], m[0], m[1], m[7], m[4], m[5])
    tiepoints, scale = tags.get(MODEL_TIEPOINT), tags.get(MODEL_PIXEL_SCALE)
    if tiepoints is None or scale is None or len(tiepoints) != 6 or len(scale) < 2:
        return None
    i, j, _, x, y, _ = (float(v) for v in tiepoints)
    sx, sy = float(scale[0]), float(scale[1])
    return (x - i * sx, sx, 0.0, y + j * sy, 0.0, -sy)


def _geo_keys(directory: Any) -> dict[int, int]:
    """Short-valued GeoKeys (TIFFTagLocation 0) of a GeoKeyDirectoryTag."""
    if directory is None:
        return {}
    values = [int(v) for v in directory]
    count = values[3]
    keys = {}
    for n in range(count):
        key, location, _, value = values[4 + 4 * n : 8 + 4 * n]
        if location == 0:
            keys[key] = value
    return keys


def _epsg(keys: dict[int, int]) -> str | None:
    for key in (PROJECTED_CS_TYPE, GEOGRAPHIC_TYPE):
        code = keys.get(key)
        if code is not None and 0 < code < USER_DEFINED:
            return f"EPSG:{code}"
    return None


def orientation_affine(orientation: int, width: int, height: int) -> tuple[float, float, float, float, float, float]:
    """(a, b, c, d, e, f): the stored-raster corner (x, y) = (a*u + b*v + c, d*u + e*v + f)
    of upright corner (u, v), after Pillow's exif_transpose of a (width, height) raster
    stored with this EXIF / TIFF orientation (1-8)."""
    return {
        2: (-1, 0, width, 0, 1, 0),  # mirrored left-right
        3: (-1, 0, width, 0, -1, height),  # rotated 180
        4: (1, 0, 0, 0, -1, height),  # mirrored top-bottom
        5: (0, 1, 0, 1, 0, 0),  # transposed
        6: (0, 1, 0, -1, 0, height),  # shown turned 90 degrees clockwise
        7: (0, -1, width, -1, 0, height),  # transversed
        8: (0, -1, width, 1, 0, 0),  # shown turned 90 degrees counterclockwise
    }.get(orientation, (1, 0, 0, 0, 1, 0))


def upright(georef: Georef, orientation: int, width: int, height: int) -> Georef:
    """The georeferencing of the upright image, from that of its stored (width, height) raster."""
    a, b, c, d, e, f = orientation_affine(orientation, width, height)
    g0, g1, g2, g3, g4, g5 = georef.geotransform
    geotransform = (
        g0 + g1 * c + g2 * f,
        g1 * a + g2 * d,
        g1 * b + g2 * e,
        g3 + g4 * c + g5 * f,
        g4 * a + g5 * d,
        g4 * b + g5 * e,
    )
    return Georef(tuple(float(v) for v in geotransform), georef.crs)  # type: ignore[arg-type]


def read_georef(data: bytes) -> Georef | None:
    """The georeferencing of image bytes' upright pixels: a GeoTIFF's own, else None.

    Opens the header only (Pillow reads tags, not pixels); bytes that are not a TIFF, or a
    TIFF without georeferencing, give None."""
    import io

    from PIL import Image

    if data[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            georef = tiff_georef(image)
            if georef is None:
                return None
            orientation = int(image.tag_v2.get(ORIENTATION, 1))
            # the stored raster's size (Pillow's image.size is already the upright one)
            width, height = int(image.tag_v2[IMAGE_WIDTH]), int(image.tag_v2[IMAGE_LENGTH])
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        return None
    return upright(georef, orientation, width, height) if orientation != 1 else georef
