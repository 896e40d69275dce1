import flux_compile as fc

@fc.net
class Affine:
    def __init__(self, n_in, n_out):
        self.W = fc.initn(n_in, n_out)
        self.b = fc.initn(1, n_out)
    def forward(self, x):
        return x @ self.W + self.b
