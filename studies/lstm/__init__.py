"""The h-detach LSTM: exact, fused, and packable."""

from studies.lstm.errors import KernelBuildError
from studies.lstm.modules import HDetachLSTM, PackedHDetachLSTM, sample_detach_mask
from studies.lstm.reference import detach_loop_lstm

__all__ = ["HDetachLSTM", "KernelBuildError", "PackedHDetachLSTM", "detach_loop_lstm", "sample_detach_mask"]
