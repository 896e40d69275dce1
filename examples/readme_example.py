import numpy as np
import flux_compile as fc


@fc.net
class Layer:
    def __init__(self, n_in, n_out):
        self.W = fc.glorot_uniform(n_in, n_out)
        self.b = fc.zeros(1, n_out)

    def forward(self, x):
        h = np.tanh(x @ self.W + self.b)
        return h


m = Layer(3, 2)
x = np.random.default_rng(0).standard_normal((4, 3))
y, back = m.pullback(x)          # forward, keeping what backward needs
dx = back(np.ones_like(y))       # accumulates m.W.grad and m.b.grad, returns dx
m.update(0.1)                    # SGD step, then zero the gradients
print(fc.source(m, "backward"))
