"""Layers of the papers in the kzoo zoo, one family per module."""

from kzoo.layers.layer_norm_rnn import LayerNormGRU
from kzoo.layers.layer_norm_rnn import LayerNormGRUCell
from kzoo.layers.layer_norm_rnn import LayerNormLSTM
from kzoo.layers.layer_norm_rnn import LayerNormLSTMCell
from kzoo.layers.layer_norm_rnn import LayerNormSimpleRNN
from kzoo.layers.layer_norm_rnn import LayerNormSimpleRNNCell
from kzoo.layers.layer_norm_rnn import layer_norm
from kzoo.layers.layer_norm_rnn import layer_norm_gru_step
from kzoo.layers.layer_norm_rnn import layer_norm_lstm_step
from kzoo.layers.layer_norm_rnn import layer_norm_simple_rnn_step
from kzoo.layers.random_walk import AffinityLoss
from kzoo.layers.random_walk import PixelAffinity
from kzoo.layers.random_walk import RandomWalk
from kzoo.layers.em_attention import EMAttention
from kzoo.layers.em_attention import HighwayEM
from kzoo.layers.matrix_backprop import LogEig
from kzoo.layers.matrix_backprop import MatrixPower
from kzoo.layers.matrix_backprop import MatrixSqrt
from kzoo.layers.matrix_backprop import NormalizedCut
from kzoo.layers.matrix_backprop import SecondOrderPooling
from kzoo.layers.matrix_backprop import UpperTriangle
from kzoo.layers.stable_gru import CandidateSpectralNorm
from kzoo.layers.stable_gru import StableGRU
from kzoo.layers.stable_gru import StableGRUCell
