"""Optimizers of kzoo: the learned coordinatewise-LSTM optimizer.

- `LSTMOptimizer` (`kzoo.optimizers.learned`): a `keras.optimizers.Optimizer`
  whose meta-parameters come from the zoo;
- `kzoo.optimizers.meta`: the meta-trainer that learns them;
- `kzoo.optimizers.problems`: the random problem families it learns on.
"""

from kzoo.optimizers.learned import LSTMOptimizer
from kzoo.optimizers.learned import initial_meta_parameters
from kzoo.optimizers.learned import meta_parameter_shapes
from kzoo.optimizers.learned import preprocess_gradients
from kzoo.optimizers.learned import step
