"""Models assembled from kzoo layers, with pretrained weights from the zoo.

Every builder takes `weights=` (a zoo preset) and has `from_preset` and
`presets`; `get` and `list_models` work on the registered models
(`kzoo.zoo` holds the registry).
"""

from kzoo.applications.em_segmentation import EMANet
from kzoo.applications.em_segmentation import HEMNet
from kzoo.applications.ln_rnn import LNLSTMCharLM
from kzoo.applications.ln_rnn import LNLSTMClassifier
from kzoo.applications.ln_rnn import LSTMCharLM
from kzoo.applications.ln_rnn import LSTMClassifier
from kzoo.applications.o2p import DeepO2P
from kzoo.applications.segmentation import FCN
from kzoo.applications.segmentation import RWN
from kzoo.applications.shared_basis_resnet import SharedBasisResNet
from kzoo.zoo.models import get
from kzoo.zoo.models import list_models
from kzoo.zoo.presets import PresetError
from kzoo.zoo.presets import load_preset
