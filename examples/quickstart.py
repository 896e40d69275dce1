"""Train a two-layer model on a toy problem and print its generated backward.

    python examples/quickstart.py
"""
import numpy as np

import flux_compile as fc


@fc.net
class Affine:
    def __init__(self, n_in, n_out, init=fc.initn):
        self.W = init(n_in, n_out)
        self.b = init(1, n_out)

    def forward(self, x):
        return x @ self.W + self.b


@fc.net
class TLP:
    def __init__(self, first, second):
        self.first, self.second = first, second

    def forward(self, x):
        l1 = fc.sigmoid(self.first(x))
        return fc.softmax(self.second(l1))


def main(steps=300, seed=0):
    rng = np.random.default_rng(seed)
    fc.init.seed(seed)                  # the initial weights too: the same run every time
    # two interleaved spirals' worth of points, three classes by angle sector
    x = rng.standard_normal((512, 2))
    labels = (np.floor((np.arctan2(x[:, 1], x[:, 0]) + np.pi) / (2 * np.pi / 3)) % 3).astype(int)
    y = fc.data.onehot(labels, 3)
    m = TLP(Affine(2, 32, init=fc.glorot_uniform), Affine(32, 3, init=fc.glorot_uniform))
    opt = fc.optim.Adam(0.02)
    for step in range(steps):
        probs, back = m.pullback(x)
        loss, (dprobs, _) = fc.grad(fc.crossentropy, probs, y)
        back(dprobs)
        m.update(opt)
        if step % 100 == 0 or step == steps - 1:
            acc = np.mean(fc.data.onecold(probs) == labels)
            print(f"step {step:4d}  loss {loss:.4f}  accuracy {acc:.3f}")
    print("\nThe generated backward of TLP:\n")
    print(fc.source(m, "backward"))
    print("The generated backward of Affine:\n")
    print(fc.source(m.first, "backward"))
    return loss


if __name__ == "__main__":
    main()
