"""Models assembled from kzoo layers, with pretrained weights from the zoo."""

from kzoo.applications.em_segmentation import EMANet
from kzoo.applications.em_segmentation import HEMNet
from kzoo.applications.ln_rnn import LNLSTMCharLM
from kzoo.applications.ln_rnn import LNLSTMClassifier
from kzoo.applications.ln_rnn import LSTMCharLM
from kzoo.applications.ln_rnn import LSTMClassifier
from kzoo.applications.o2p import DeepO2P
from kzoo.applications.presets import PresetError
from kzoo.applications.presets import load_preset
from kzoo.applications.segmentation import FCN
from kzoo.applications.segmentation import RWN
from kzoo.applications.shared_basis_resnet import SharedBasisResNet
from kzoo.applications.zoo import get
from kzoo.applications.zoo import list_models
