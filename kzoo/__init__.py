"""kzoo: structured layers of deep-learning papers as Keras 3 components."""

__version__ = "0.1.0"

from kzoo import applications  # noqa: E402
from kzoo import callbacks  # noqa: E402
from kzoo import layers  # noqa: E402
from kzoo import optimizers  # noqa: E402
from kzoo import regularizers  # noqa: E402
