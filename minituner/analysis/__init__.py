"""What the runs are made to show: the spectrum of ΔW, subspace similarity and the
learning-forgetting frontier. Plain tensors and numbers in; no run store, no training."""
