"""Gradients of optima by the implicit function theorem, at no cost to the forward pass.

If ``x*`` solves ``g(x*, theta) = 0`` (the gradient of an objective at its optimum) then
``dx* = -(dg/dx)^-1 (dg/dtheta) dtheta``. The solvers of the NB GLM run their iterations
without gradients and pass the optimum through `with_implicit_gradient`, which returns it
unchanged and differentiates it by such a rule; the rule is only traced when a derivative
is asked for, so plain fits pay nothing for it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from jaxtyping import Array

TangentRule = Callable[[Array, Sequence[Array], Sequence[Array]], Array]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def with_implicit_gradient(tangent_rule: TangentRule, solution: Array, *params: Array) -> Array:
    """`solution`, whose tangent is ``tangent_rule(solution, params, param_tangents)``.

    `tangent_rule` must be linear in the tangents (e.g. built from `jax.jvp`) and defined at
    module level (it is a static argument). The tangent of `solution` itself is ignored:
    an optimum does not depend on where its solver started.
    """
    del tangent_rule, params
    return solution


@with_implicit_gradient.defjvp
def _implicit_jvp(tangent_rule, primals, tangents):
    solution, *params = primals
    return solution, tangent_rule(solution, params, tangents[1:])
