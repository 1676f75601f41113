r"""``ExactConv``: a circular convolution whose penalty value is its exact ℓ2 norm, not an estimate.

:class:`liplax.nn.Conv` gives the trivial-bound penalty (``lipschitz_estimate``, the fast path)
one warm power-iteration step per training step: an estimate from *below*. A convolution's
spectrum has many near-equal top singular values (one per frequency), so power iteration lags:
measured on a trained 4-conv CNN (``fashion-cnn4`` with the gap penalty), the four estimates
were 0.6–3.6% under the exact norms, and the penalty (and the gap penalty, which compares the
attained gain with that estimate) saw a bound 8% below the certified one. Training then
shrinks the top singular direction the power vector follows while neighbouring directions
grow unseen, which is looseness the certificate pays for.

``ExactConv`` is the same map (circular padding, strides dividing the input) whose ℓ2 penalty
value is the exact norm of the layer on its ``input_size``, by FFT and polyphase decomposition
(Sedghi, Gupta & Long, ICLR 2019; :func:`liplax.conv.exact_spectral_norm`), differentiable
through the frequency matrices' singular values. Its power-iteration state still moves (one
step per call, training mode), so the gap penalty's start direction
(:mod:`liplax.training.gap`) stays the layer's top right singular vector. The certified
constants (``lipschitz_bound``) are :class:`~liplax.nn.Conv`'s. Cost: the certified norm and its
gradient per layer and step; measured on ``fashion-cnn4`` with the gap penalty, a training step
took 3.7× that of the same network with :class:`~liplax.nn.Conv` (interleaved, same process).
See ``docs/design.md §training`` (CNNs whose trivial bound is tight).
"""

from __future__ import annotations

from liplax.guarantee import Bound
from liplax.nn.conv import Conv, is_circular
from liplax.nn.registry import register_layer


def _example(rngs):
    return ExactConv(2, 3, 3, input_size=(6, 6), strides=2, padding="CIRCULAR", rngs=rngs), (
        6, 6, 2)


@register_layer(example=_example)
class ExactConv(Conv):
    """Circular :class:`~liplax.nn.Conv` whose ℓ2 ``lipschitz_estimate`` is its exact norm.

    Args: as :class:`~liplax.nn.Conv`; ``padding`` must be ``"CIRCULAR"`` and ``strides`` must
    divide ``input_size`` (the cases where the norm is exact), else ``ValueError``.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *, input_size=None,
                 strides=1, padding="CIRCULAR", **kw):
        super().__init__(in_features, out_features, kernel_size, input_size=input_size,
                         strides=strides, padding=padding, **kw)
        if not is_circular(self.padding):
            raise ValueError(f"ExactConv: padding must be 'CIRCULAR' (the exact norm is that of "
                             f"a circular convolution), got {padding!r}")
        hw, st = self.input_size, self.strides
        if hw[0] % st[0] or hw[1] % st[1]:
            raise ValueError(f"ExactConv: strides {st} must divide input_size {hw} (the exact "
                             "norm by polyphase decomposition)")

    def _estimate(self, shape: tuple[int, ...], p: float) -> Bound:
        """ℓ2: the exact norm on ``input_size`` (and one warm power step of the state); else
        the certified bound."""
        if p != 2:
            return self._bound(shape, p)
        self.check_state_size(shape, "lipschitz_estimate")
        self._power_sigma(self.kernel[...], update=True)  # keeps the state a top direction
        return self._bound(shape, p)


__all__ = ["ExactConv"]
