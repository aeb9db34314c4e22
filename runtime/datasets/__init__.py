"""Place-recognition datasets: every source yields one :class:`PlaceDataset`.

Sources: the generic CSV folder (also written by the synthetic world, ``training.synth``), aligned
sequences such as Nordland, and the official Pittsburgh 30k/250k and Tokyo 24/7 ``.mat`` files.
Geography (UTM zones, bearings) is :mod:`runtime.datasets.geo`; a dataset of keyframes from a ROS bag
is :mod:`runtime.datasets.rosbag`. Lean: numpy, cv2 and csv; scipy only when a ``.mat`` is read. May
import sources (image decoding, bag reading) and the shared top-level modules; never models or maps.
"""

from runtime.datasets.aligned import frame_spacing_m, load_aligned, load_nordland
from runtime.datasets.generic import load_generic, write_split_csv
from runtime.datasets.matlab import keep_first_per_panorama, load_dbstruct, load_pittsburgh, load_tokyo247
from runtime.datasets.open import SPEC_HELP, is_dataset_spec, open_dataset
from runtime.datasets.place import PlaceDataset, read_rgb

__all__ = [
    "SPEC_HELP",
    "PlaceDataset",
    "frame_spacing_m",
    "is_dataset_spec",
    "keep_first_per_panorama",
    "load_aligned",
    "load_dbstruct",
    "load_generic",
    "load_nordland",
    "load_pittsburgh",
    "load_tokyo247",
    "open_dataset",
    "read_rgb",
    "write_split_csv",
]
