"""smvision's development tools: what the tests, the demo and the benchmarks share, and
what never ships in the smvision wheel or the images.

- local_s3: a local S3 (moto's server) and scikit-image's photos;
- toolkit_harness: one archive under `smvision serve` and under the AWS toolkit or
  TorchServe, side by side (its venv's setup script and launcher are in toolkit/);
- weights: EfficientDet weights that behave like trained ones, for numerics.

Installed editable by `make install` (`pip install --no-deps -e devtools`), so
`import devtools` works from any script or working directory of the checkout's venv.
Servers are started with the package's own smvision.deploy.server_process.
"""
