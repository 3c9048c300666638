"""Start the SageMaker PyTorch inference toolkit natively: what `serve` does in the AWS image.

Run with the toolkit venv's python. The only change to the toolkit is the TorchServe
config path, a module constant fixed at /etc/sagemaker-ts.properties: it is pointed at
$SMVISION_TS_CONFIG_FILE (a temp path) before main() runs. Everything else is read from
the environment exactly as in the image: SAGEMAKER_BASE_DIR (model dir = <it>/model,
read when sagemaker_inference.environment is first imported), SAGEMAKER_BIND_TO_PORT,
SAGEMAKER_PROGRAM, TEMP/TMPDIR (TorchServe's pid file, sockets, java.io.tmpdir), and the
current directory (the model store .sagemaker/ts/models and TorchServe's logs/).
"""

import os
import sys

from sagemaker_pytorch_serving_container import serving, torchserve

config = os.environ.get("SMVISION_TS_CONFIG_FILE")
if not config:
    sys.exit("SMVISION_TS_CONFIG_FILE must name a writable path for the TorchServe config")
torchserve.TS_CONFIG_FILE = config
serving.main()
