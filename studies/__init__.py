"""hdetach-studies core: the h-detach LSTM, the paper's tasks, training, and robustness studies."""

from studies.lstm import HDetachLSTM, PackedHDetachLSTM, detach_loop_lstm, sample_detach_mask

__all__ = ["HDetachLSTM", "PackedHDetachLSTM", "detach_loop_lstm", "sample_detach_mask"]
