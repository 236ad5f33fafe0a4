"""TF Serving export of kzoo models and its verification."""

from kzoo.serving.export import ExportError
from kzoo.serving.export import VerificationError
from kzoo.serving.export import VerifyReport
from kzoo.serving.export import export
from kzoo.serving.export import exported_versions
from kzoo.serving.export import remove_stale_exports
from kzoo.serving.export import verify
from kzoo.serving.export import write_models_config
