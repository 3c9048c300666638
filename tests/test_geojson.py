"""GeoJSON masks: pixel-edge polygons with holes, simplification, geotransforms and GeoTIFFs."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from conftest import BUCKET
from smvision.errors import InferenceError
from smvision.geo import Georef, orientation_affine, read_georef
from smvision.images import decode_image
from smvision.models.sam.geojson import GeoJsonOptions, feature_collection, mask_features
from smvision.kinds.sam_prompts import parse_prompts

UTM = (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0)  # 10 m pixels, north up


def signed_area(ring) -> float:
    x, y = np.array(ring, dtype=float).T
    return float((x[:-1] * y[1:] - x[1:] * y[:-1]).sum() / 2)


def rasterize(feature, shape, geotransform=None) -> np.ndarray:
    """The pixels a Feature's polygons cover (rasterio, pixel centres), back on the image grid."""
    from affine import Affine
    from rasterio.features import rasterize as burn

    transform = Affine.from_gdal(*geotransform) if geotransform else Affine.identity()
    geometry = feature["geometry"]
    if not geometry["coordinates"]:
        return np.zeros(shape, bool)
    return burn([(geometry, 1)], out_shape=shape, transform=transform, dtype=np.uint8).astype(bool)


def square_mask() -> np.ndarray:
    mask = np.zeros((1, 8, 10), bool)
    mask[0, 2:5, 3:6] = True  # rows 2-4, columns 3-5: pixel corners x 3..6, y 2..5
    return mask


def test_a_square_mask_in_pixel_coordinates():
    (feature,) = mask_features(square_mask(), GeoJsonOptions())
    assert feature["type"] == "Feature" and feature["properties"] == {"mask_index": 0}
    ((ring,),) = feature["geometry"]["coordinates"]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert sorted(map(tuple, ring[:-1])) == [(3, 2), (3, 5), (6, 2), (6, 5)]
    assert signed_area(ring) == 9.0  # counterclockwise with y as the second axis


def test_a_square_mask_on_a_known_geotransform_gives_its_map_coordinates():
    options = GeoJsonOptions(Georef(UTM, "EPSG:32633"))
    collection = feature_collection(mask_features(square_mask(), options), [{"score": 0.875}], options)
    assert collection["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    assert collection["geotransform"] == list(UTM)
    (feature,) = collection["features"]
    assert feature["properties"] == {"mask_index": 0, "score": 0.875}
    ((ring,),) = feature["geometry"]["coordinates"]
    assert sorted(map(tuple, ring[:-1])) == [
        (500030.0, 4599950.0), (500030.0, 4599980.0), (500060.0, 4599950.0), (500060.0, 4599980.0)
    ]
    assert signed_area(ring) == 900.0  # 3 x 3 pixels of 10 m, outer ring counterclockwise on the map
    # a rotated, sheared geotransform: every corner goes through x' = c + a*x + b*y, y' = f + d*x + e*y
    c, a, b, f, d, e = gt = (100.0, 2.0, 0.5, 50.0, -0.25, -3.0)
    (feature,) = mask_features(square_mask(), GeoJsonOptions(Georef(gt)))
    ((ring,),) = feature["geometry"]["coordinates"]
    expected = sorted((c + a * x + b * y, f + d * x + e * y) for x, y in [(3, 2), (6, 2), (6, 5), (3, 5)])
    assert sorted(map(tuple, ring[:-1])) == expected and signed_area(ring) > 0


def test_holes_are_kept_and_polygons_cover_exactly_the_mask():
    masks = np.zeros((2, 40, 50), bool)
    masks[0, 5:35, 5:45] = True
    masks[0, 10:20, 10:20] = False  # a hole
    masks[0, 22:30, 30:40] = False  # a second hole
    masks[0, 25:27, 33:35] = True  # an island inside the second hole
    rng = np.random.default_rng(0)
    masks[1] = rng.random((40, 50)) > 0.6  # many small regions, holes and diagonal touches
    features = mask_features(masks, GeoJsonOptions())
    polygons = features[0]["geometry"]["coordinates"]
    assert sorted(len(p) for p in polygons) == [1, 3]  # the frame with two holes, and the island
    for polygon in polygons:
        outer, *holes = polygon
        assert signed_area(outer) > 0 and all(signed_area(h) < 0 for h in holes)
    for feature, mask in zip(features, masks):
        np.testing.assert_array_equal(rasterize(feature, mask.shape), mask)
    # georeferenced: the same pixels, read back through the geotransform
    for feature, mask in zip(mask_features(masks, GeoJsonOptions(Georef(UTM))), masks):
        np.testing.assert_array_equal(rasterize(feature, mask.shape, UTM), mask)
    empty = mask_features(np.zeros((1, 5, 5), bool), GeoJsonOptions())
    assert empty[0]["geometry"] == {"type": "MultiPolygon", "coordinates": []}


def test_simplification_reduces_vertices_within_the_tolerance_in_pixels():
    from shapely.geometry import shape

    yy, xx = np.mgrid[:200, :200]
    disk = (((yy - 100) ** 2 + (xx - 90) ** 2) < 70**2)[None]
    disk[0, 90:110, 80:100] = False  # a hole survives simplification
    exact = shape(mask_features(disk, GeoJsonOptions())[0]["geometry"])
    vertices = [len(exact.geoms[0].exterior.coords)]
    for tolerance in (0.5, 1.0, 2.0):
        simple = shape(mask_features(disk, GeoJsonOptions(simplify_tolerance=tolerance))[0]["geometry"])
        assert simple.is_valid and len(simple.geoms[0].interiors) == 1
        assert simple.hausdorff_distance(exact) <= tolerance + 1e-9
        vertices.append(len(simple.geoms[0].exterior.coords))
    assert vertices[0] > vertices[1] > vertices[2] >= vertices[3] and vertices[2] < vertices[0] / 4
    # the tolerance is in pixels whatever the geotransform: 10 m pixels, 1 pixel = 10 m
    on_map = shape(mask_features(disk, GeoJsonOptions(Georef(UTM), 1.0))[0]["geometry"])
    exact_on_map = shape(mask_features(disk, GeoJsonOptions(Georef(UTM)))[0]["geometry"])
    assert 1.0 < on_map.hausdorff_distance(exact_on_map) <= 10.0 + 1e-6


@pytest.mark.parametrize(
    "params, words",
    [
        ({"geotransform": [1, 2, 3, 4, 5]}, "six numbers"),
        ({"geotransform": [0, 1, 0, 0, 0, "-1"]}, "six numbers"),
        ({"geotransform": [0, 1, 0, 0, 0, True]}, "six numbers"),
        ({"geotransform": "0 1 0 0 0 -1"}, "six numbers"),
        ({"geotransform": [0, 1, 0, 0, 0, float("inf")]}, "finite"),
        ({"geotransform": [0, 1, 0, float("nan"), 0, -1]}, "finite"),
        ({"geotransform": [0, 1, 0, 0, 0, 10**400]}, "finite"),
        ({"geotransform": [0, 1e308, 0, 0, 0, -1e308]}, "maps the image's corners (10x10 pixels) past"),
        ({"geotransform": [1e308, 1e307, 0, 0, 0, -1]}, "past the largest finite number"),
        ({"geotransform": [0, 1, 1e308, 0, 0, -1]}, "past the largest finite number"),
        ({"geotransform": [0, 0, 0, 0, 0, -1]}, "a*e - b*d = 0"),
        ({"geotransform": [0, 1, 2, 0, 2, 4]}, "a*e - b*d = 0"),
        ({"geotransform": UTM, "crs": "WGS84"}, "EPSG code"),
        ({"geotransform": UTM, "crs": 12}, "EPSG code"),
        ({"simplify_tolerance": -1}, ">= 0"),
        ({"simplify_tolerance": "1"}, "must be numbers"),
        ({"geotransform": UTM, "mask_format": "rle"}, "apply to mask_format \"geojson\" only"),
    ],
)
def test_bad_geojson_parameters_are_400s(params, words):
    with pytest.raises(InferenceError) as caught:
        parse_prompts({"points": [[1, 1]], "labels": [1], "mask_format": "geojson", **params}, (10, 10), "record 0")
    assert caught.value.status_code == 400 and words in caught.value.message, caught.value.message


def test_crs_forms():
    for crs in (32633, "EPSG:32633", "epsg:32633", "urn:ogc:def:crs:EPSG::32633"):
        prompts = parse_prompts({"box": [0, 0, 1, 1], "mask_format": "geojson", "geotransform": UTM, "crs": crs}, (9, 9), "r")
        assert prompts.crs == "EPSG:32633" and prompts.geotransform == UTM


def geotiff(array: np.ndarray, geotransform, crs: str | None, pixel_is_point: bool = False) -> bytes:
    """A GeoTIFF written by rasterio (GDAL) with this geotransform and CRS (PixelIsPoint:
    GDAL writes the tiepoint at the first pixel's centre and the raster type key 2)."""
    from affine import Affine
    from rasterio.io import MemoryFile

    height, width = array.shape[:2]
    with MemoryFile() as memory:
        with memory.open(driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                         transform=Affine.from_gdal(*geotransform), crs=crs, photometric="RGB") as dataset:
            if pixel_is_point:
                dataset.update_tags(AREA_OR_POINT="Point")
            dataset.write(np.moveaxis(array, 2, 0))
        return memory.read()


def test_a_geotiffs_own_georeferencing_is_read():
    pixels = np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    data = geotiff(pixels, UTM, "EPSG:32633")
    np.testing.assert_array_equal(decode_image(data, "t"), pixels)
    assert read_georef(data) == Georef(UTM, "EPSG:32633")
    rotated = (10.0, 0.5, 0.25, 20.0, 0.25, -0.5)  # GDAL writes a ModelTransformationTag
    assert read_georef(geotiff(pixels, rotated, "EPSG:4326")) == Georef(rotated, "EPSG:4326")
    assert read_georef(geotiff(pixels, UTM, None)) == Georef(UTM, None)
    point = geotiff(pixels, UTM, "EPSG:32633", pixel_is_point=True)
    assert Image.open(io.BytesIO(point)).tag_v2[33922][3:5] == (500005.0, 4599995.0)  # a pixel centre
    assert read_georef(point) == Georef(UTM, "EPSG:32633")  # shifted back to corners, as GDAL reads it
    plain = io.BytesIO()
    Image.fromarray(pixels).save(plain, format="TIFF")
    assert read_georef(plain.getvalue()) is None
    assert read_georef(b"\xff\xd8 not a tiff") is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_maps_upright_pixels_to_stored_pixels(orientation):
    """EXIF / TIFF orientation: the upright pixel (u, v) our decoder gives is the stored
    pixel orientation_affine names, so a GeoTIFF's geotransform follows the rotation."""
    stored = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    exif = Image.Exif()
    exif[274] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([stored] * 3)).save(buffer, format="PNG", exif=exif)
    upright = decode_image(buffer.getvalue(), "t")[:, :, 0]
    a, b, c, d, e, f = orientation_affine(orientation, 7, 5)
    for v in range(upright.shape[0]):
        for u in range(upright.shape[1]):
            x, y = a * (u + 0.5) + b * (v + 0.5) + c, d * (u + 0.5) + e * (v + 0.5) + f
            assert upright[v, u] == stored[int(y), int(x)]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_rotated_geotiffs_map_coordinates_follow_its_pixels(orientation):
    """A GeoTIFF with a TIFF Orientation tag: each upright pixel the decoder gives keeps
    the map position of the stored pixel it came from."""
    from PIL import TiffImagePlugin

    stored = np.arange(5 * 7, dtype=np.uint8).reshape(5, 7)
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[274] = orientation
    tags[33550] = (10.0, 10.0, 0.0)  # ModelPixelScale
    tags[33922] = (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0)  # ModelTiepoint: corner (0, 0)
    tags[34735] = (1, 1, 0, 2, 1024, 0, 1, 1, 3072, 0, 1, 32633)  # projected, EPSG:32633
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([stored] * 3)).save(buffer, format="TIFF", tiffinfo=tags)
    upright = decode_image(buffer.getvalue(), "t")[:, :, 0]
    georef = read_georef(buffer.getvalue())
    assert georef.crs == "EPSG:32633"
    c, a, b, f, d, e = georef.geotransform
    for v in range(upright.shape[0]):
        for u in range(upright.shape[1]):
            x, y = c + a * (u + 0.5) + b * (v + 0.5), f + d * (u + 0.5) + e * (v + 0.5)
            column, row = (x - 500000.0) / 10.0, (4600000.0 - y) / 10.0
            assert upright[v, u] == stored[int(row), int(column)]


# --- end to end: the sam kind on a GeoTIFF, sam-decode with a geotransform ---


@pytest.fixture(scope="module")
def sam_handler(sam_model_dir):
    from smvision.container.handler import Handler

    handler = Handler(str(sam_model_dir("sam")))
    handler.load()
    return handler


def call(handler, body):
    data, kind = handler.invoke(json.dumps(body).encode(), "application/json", None)
    assert kind == "application/json"
    return json.loads(data)


def rle_masks(answer) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return np.stack([mask_utils.decode(m).astype(bool) for m in answer["masks"]])


def test_the_sam_kind_answers_a_geotiffs_map_coordinates(sam_handler, photos):
    pixels = decode_image(photos["rocket.jpg"], "rocket")[::4, ::4]  # 107 x 160
    image = base64.b64encode(geotiff(pixels, UTM, "EPSG:32633")).decode()
    prompt = {"image": image, "box": [20, 10, 140, 100]}
    rle = call(sam_handler, {**prompt, "mask_format": "rle"})
    masks = rle_masks(rle)
    assert masks.shape == (3, 107, 160) and masks.any()
    answer = call(sam_handler, {**prompt, "mask_format": "geojson"})
    assert answer["embedding_cache"] == "hit" and answer["mask_format"] == "geojson"
    collection = answer["masks"]
    assert collection["type"] == "FeatureCollection"
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    assert collection["geotransform"] == list(UTM)
    assert [f["properties"] for f in collection["features"]] == [
        {"mask_index": i, "score": s} for i, s in enumerate(answer["scores"])
    ]
    for feature, mask in zip(collection["features"], masks):
        xy = np.array([p for polygon in feature["geometry"]["coordinates"] for ring in polygon for p in ring])
        assert (xy[:, 0] >= 500000).all() and (xy[:, 0] <= 500000 + 1600).all()
        assert (xy[:, 1] <= 4600000).all() and (xy[:, 1] >= 4600000 - 1070).all()
        np.testing.assert_array_equal(rasterize(feature, mask.shape, UTM), mask)
    # a geotransform in the request wins over the file's, and crs alone replaces the file's CRS
    other = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    given = call(sam_handler, {**prompt, "mask_format": "geojson", "geotransform": other})["masks"]
    assert "crs" not in given and given["geotransform"] == list(other)
    np.testing.assert_array_equal(rasterize(given["features"][0], masks[0].shape), masks[0])
    renamed = call(sam_handler, {**prompt, "mask_format": "geojson", "crs": 3857})["masks"]
    assert renamed["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::3857"
    assert renamed["features"] == collection["features"]


def test_a_plain_image_answers_pixel_coordinates(sam_handler, photos):
    answer = call(sam_handler, {"bucket": BUCKET, "key": "rocket.jpg", "points": [[320, 200]], "labels": [1],
                                "mask_format": "geojson", "multimask_output": False})
    collection = answer["masks"]
    assert set(collection) == {"type", "features"} and len(collection["features"]) == 1
    with pytest.raises(InferenceError) as caught:
        call(sam_handler, {"bucket": BUCKET, "key": "rocket.jpg", "points": [[320, 200]], "labels": [1],
                           "mask_format": "geojson", "crs": 32633})
    assert caught.value.status_code == 400 and "'crs' needs a 'geotransform'" in caught.value.message


def test_sam_decode_takes_a_geotransform_and_rejects_a_bad_one(sam_model_dir, tiny_sam, photos):
    from segment_anything import SamPredictor

    from smvision.container.handler import Handler

    handler = Handler(str(sam_model_dir("sam-decode")))
    handler.load()
    predictor = SamPredictor(tiny_sam)
    predictor.set_image(decode_image(photos["rocket.jpg"], "rocket"))
    buffer = io.BytesIO()
    np.save(buffer, predictor.get_image_embedding().numpy())
    record = {"image_embedding": base64.b64encode(buffer.getvalue()).decode(), "original_size": [427, 640],
              "box": [10, 20, 600, 400], "multimask_output": False}
    rle = rle_masks(call(handler, {**record, "mask_format": "rle"}))
    answer = call(handler, {**record, "mask_format": "geojson", "geotransform": list(UTM), "crs": "EPSG:32633",
                            "simplify_tolerance": 0})
    (feature,) = answer["masks"]["features"]
    assert feature["properties"] == {"mask_index": 0, "score": answer["scores"][0]}
    assert answer["masks"]["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32633"
    np.testing.assert_array_equal(rasterize(feature, (427, 640), UTM), rle[0])
    for bad, words in (([1, 2, 3, 4, 5, 6, 7], "six numbers"), ([0, 1, 0, 0, 0, 0], "a*e - b*d = 0"),
                       ([0, 1e308, 0, 0, 0, -1e308], "'geotransform' [0.0, 1e+308, 0.0, 0.0, 0.0, -1e+308] maps")):
        with pytest.raises(InferenceError) as caught:
            call(handler, {**record, "mask_format": "geojson", "geotransform": bad})
        assert caught.value.status_code == 400 and words in caught.value.message, caught.value.message
    with pytest.raises(InferenceError) as caught:
        call(handler, {**record, "mask_format": "geojson", "crs": 32633})
    assert caught.value.status_code == 400 and "'crs' needs a 'geotransform'" in caught.value.message


def test_a_geotiff_whose_corners_overflow_is_a_400_for_geojson_only(sam_handler, photos):
    """A pixel scale of 1e307 puts the far corner of a 160-pixel-wide image past the
    largest float: GeoJSON would carry Infinity (not JSON), so the image's own
    georeferencing is refused; a geotransform in the request, or another mask_format,
    still answers."""
    from PIL import TiffImagePlugin

    pixels = decode_image(photos["rocket.jpg"], "rocket")[::4, ::4]  # 107 x 160
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[33550] = (1e307, 1e307, 0.0)  # ModelPixelScale
    tags[33922] = (0.0, 0.0, 0.0, 500000.0, 4600000.0, 0.0)  # ModelTiepoint
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF", tiffinfo=tags)
    prompt = {"image": base64.b64encode(buffer.getvalue()).decode(), "box": [20, 10, 140, 100]}
    with pytest.raises(InferenceError) as caught:
        call(sam_handler, {**prompt, "mask_format": "geojson"})
    assert caught.value.status_code == 400, caught.value.message
    assert "the image's georeferencing is unusable" in caught.value.message
    assert "'geotransform'" in caught.value.message  # says what to send instead
    assert call(sam_handler, {**prompt, "mask_format": "rle"})["mask_format"] == "rle"
    given = call(sam_handler, {**prompt, "mask_format": "geojson", "geotransform": list(UTM)})
    assert given["masks"]["geotransform"] == list(UTM)
