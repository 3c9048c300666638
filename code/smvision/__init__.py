"""smvision: Segment Anything and EfficientDet on Amazon SageMaker, and on a laptop.

The package under code/ is the runtime that ships inside model.tar.gz; the container,
archive and deploy sub-packages are mapped in from the repository's top-level folders.
"""

__version__ = "0.1.0"
