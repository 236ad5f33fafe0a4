"""The zoo: one registry for every kzoo artifact, its presets and its tasks.

- `kzoo.zoo.registry`: the entries (models and learned optimizers), each with
  its kind, builder, task and preset arguments; `list_entries`, `entry`,
  `train` and `evaluate` work on any of them.
- `kzoo.zoo.presets`: verified preset directories in the user's and the
  shipped zoo.
- `kzoo.zoo.tasks`: how each entry is trained and scored.
- `kzoo.zoo.models`, `kzoo.zoo.learned_optimizers`: each kind's hooks.

Importing `kzoo.zoo` imports no deep-learning framework.

Example:

>>> from kzoo import zoo
>>> zoo.entry("lnlstm_digits").task
'digits_rows'
"""

from kzoo.zoo.presets import PresetError
from kzoo.zoo.presets import user_zoo
from kzoo.zoo.registry import KINDS
from kzoo.zoo.registry import entry
from kzoo.zoo.registry import evaluate
from kzoo.zoo.registry import list_entries
from kzoo.zoo.registry import train
