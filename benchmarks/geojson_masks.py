"""Milliseconds to encode SAM-sized masks as GeoJSON, next to the other mask formats.

Three blob masks (smoothed noise, thresholded: holes, islands, ragged outlines) at the
given size are encoded by smvision's encoders in alternating rounds: rle (pycocotools),
polygon (OpenCV contours), geojson (rasterio.features.shapes + shapely, pixel
coordinates), geojson georeferenced, and geojson with simplify_tolerance 1. Prints the
median per format, its ratio to rle, and the vertex count of the GeoJSON outlines.

    python benchmarks/geojson_masks.py [--size 1500x2250] [--rounds 7] [--object]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def blob_masks(height: int, width: int, count: int = 3, seed: int = 0) -> np.ndarray:
    """count masks of smooth random blobs (what SAM's masks look like, roughly)."""
    import cv2

    rng = np.random.default_rng(seed)
    masks = []
    for k in range(count):
        noise = rng.random((height // 16, width // 16)).astype(np.float32)
        smooth = cv2.resize(cv2.GaussianBlur(noise, (0, 0), 2), (width, height), interpolation=cv2.INTER_CUBIC)
        masks.append(smooth > np.quantile(smooth, 0.6 + 0.1 * k))
    return np.stack(masks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1500x2250", help="HxW")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--object", action="store_true", help="blobs only inside a central disk (one object)")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))

    from smvision.geo import Georef
    from smvision.models.sam.geojson import GeoJsonOptions, mask_features
    from smvision.models.sam.masks import encode_masks

    masks = blob_masks(height, width)
    if args.object:  # one object in a sixth of the image, as a prompt usually gives
        yy, xx = np.ogrid[:height, :width]
        radius = min(height, width) / 6
        masks &= ((yy - height / 2) ** 2 + (xx - width / 2) ** 2 < radius**2)[None]
    utm = Georef((500000.0, 0.5, 0.0, 4600000.0, 0.0, -0.5), "EPSG:32633")
    cases = {
        "rle": lambda: encode_masks(masks, "rle"),
        "polygon (OpenCV)": lambda: encode_masks(masks, "polygon"),
        "geojson": lambda: mask_features(masks, GeoJsonOptions()),
        "geojson + geotransform": lambda: mask_features(masks, GeoJsonOptions(utm)),
        "geojson simplify 1 px": lambda: mask_features(masks, GeoJsonOptions(simplify_tolerance=1.0)),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for name, run in cases.items():  # warm-up: imports, first calls
        run()
    for _ in range(args.rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)

    def vertices(features: list) -> int:
        return sum(len(ring) for f in features for polygon in f["geometry"]["coordinates"] for ring in polygon)

    print(f"3 masks {height}x{width}, {masks.mean():.0%} of pixels set, median of {args.rounds} alternating rounds")
    base = statistics.median(times["rle"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median:8.1f} ms  x{median / base:5.1f} of rle")
    print(f"  GeoJSON vertices: exact {vertices(cases['geojson']())}, simplified 1 px {vertices(cases['geojson simplify 1 px']())}")


if __name__ == "__main__":
    main()
