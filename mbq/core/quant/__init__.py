"""The quantization library: pure math (functional), quantizer blocks,
fake-quant layers (modules) and model conversion (convert)."""
from . import functional
from .convert import (average_bits, compression_ratio, get_bit_scheme, quantize_model,
                      quantized_layers, redraw_zero_weight, set_bit_scheme, set_bits, weight_layers)
from .functional import FP_BITS, VALID_BITS, is_fp
from .modules import (BN_SWITCHES, QConv2d, QLinear, QUANT_LAYERS, SwitchableBatchNorm2d,
                      WidthStatsBatchNorm2d, frozen_weights)

__all__ = ["functional", "quantize_model", "set_bits", "get_bit_scheme", "set_bit_scheme",
           "quantized_layers", "weight_layers", "redraw_zero_weight", "compression_ratio", "average_bits", "FP_BITS",
           "VALID_BITS", "is_fp", "QConv2d", "QLinear", "QUANT_LAYERS", "SwitchableBatchNorm2d",
           "WidthStatsBatchNorm2d", "BN_SWITCHES", "frozen_weights"]
