"""The core: a scheme names how a weight is quantized, a QTensor holds the result in real bytes."""
