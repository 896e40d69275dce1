"""flux_compile: a source-transforming model compiler for Python and NumPy.

``@fc.net`` reads a class's ``forward`` source, builds a dataflow graph,
derives the backward pass symbolically and emits readable Python for forward,
backward and update, compiled once and cached.
"""
from ._version import __version__
from .errors import CompileError, GradcheckError, ModelError, install_error_display
from .params import Param, param, const, params, named_params, cast
from .rules import diffrule, jvprule, nondiff_primitive
from .functions import sigmoid, σ, relu, leakyrelu, elu, gelu, softplus, softmax, logsoftmax, logsumexp, \
    nodiff, flatten
from .model import net
from .api import source, graph, grad, update, shapes
from .gradcheck import gradcheck
from . import optim, data
from .init import initn, glorot_uniform, glorot_normal, zeros
from .losses import mse, crossentropy, logitcrossentropy, binarycrossentropy
from .layers import Affine, Dense, Chain, Dropout, dropout, freeze, unfreeze, Conv2d, MaxPool2d, AvgPool2d, \
    LayerNorm, Embedding, BatchNorm, testmode, trainmode
from .rules.conv import conv2d, maxpool2d, avgpool2d
from .recurrent import reset
from .sequences import unroll, unroll1, flip
from .rnn import RNN, GRU, LSTM
from .train import train
from .trainstep import train_step
from .io import save, load
from .transforms import jvp, jvp_source
from . import distributed
from .backends import to
from .derivatives import gradient, vjp, hvp, hvp_source, jacobian, hessian

__all__ = [
    "__version__", "CompileError", "GradcheckError", "ModelError", "Param", "param", "const", "params",
    "named_params", "cast", "diffrule", "jvprule", "jvp", "jvp_source", "gradient", "vjp", "hvp", "hvp_source", "jacobian", "hessian", "nondiff_primitive", "sigmoid", "σ", "relu", "leakyrelu", "elu", "gelu",
    "softplus", "softmax", "logsoftmax", "logsumexp", "nodiff", "flatten", "net", "source", "graph", "grad",
    "update", "shapes", "gradcheck", "optim", "data", "initn", "glorot_uniform", "glorot_normal", "zeros",
    "mse", "crossentropy", "logitcrossentropy", "binarycrossentropy", "Affine", "Dense", "Chain", "Dropout",
    "dropout", "freeze", "unfreeze", "unroll", "unroll1", "flip", "reset", "RNN", "GRU", "LSTM", "train", "train_step",
    "save", "load", "conv2d", "maxpool2d", "avgpool2d", "Conv2d", "MaxPool2d", "AvgPool2d", "LayerNorm",
    "Embedding", "BatchNorm", "testmode", "trainmode",
]

install_error_display()
del install_error_display
