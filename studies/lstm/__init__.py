"""The h-detach LSTM: exact, fused, and packable."""

from studies.lstm.modules import HDetachLSTM, PackedHDetachLSTM, sample_detach_mask
from studies.lstm.reference import detach_loop_lstm

__all__ = ["HDetachLSTM", "PackedHDetachLSTM", "detach_loop_lstm", "sample_detach_mask"]
