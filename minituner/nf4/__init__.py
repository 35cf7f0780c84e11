"""NF4 (4-bit NormalFloat) storage: the format (codebook, NF4Tensor), the codec that
quantizes and dequantizes through one backend chosen in one place, NF4Linear, storage math
and the comparison with other 4-bit formats."""
