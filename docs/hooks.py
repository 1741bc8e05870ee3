"""MkDocs hook: draw the documentation's pictures with the library before each build.

Pictures go to ``docs/generated/`` (not in git). When the shared data is not
available the hook draws nothing and the build fails in strict mode on the
missing images, which is what we want: the docs show real outputs.
"""

from __future__ import annotations

from pathlib import Path

GENERATED = Path(__file__).parent / "generated"


def on_pre_build(config, **kwargs) -> None:
    GENERATED.mkdir(exist_ok=True)
    target = GENERATED / "model_samples.png"
    if target.exists():
        return
    import jax
    import matplotlib.pyplot as plt
    import numpy as np

    import morphable
    from morphable.io import load_ict
    from morphable.plot import new_figure, render_mesh

    model = load_ict(region="face")
    identity, expression = morphable.sample(model, jax.random.key(3), (3,), expression_scale=0.4)
    faces = np.asarray(morphable.shape(model, identity, expression))
    figure, axes = new_figure(4, size=3.0)
    render_mesh(np.asarray(model.mean), model.triangles, ax=axes[0], title="mean")
    for k in range(3):
        render_mesh(faces[k], model.triangles, ax=axes[k + 1], title=f"sample {k + 1}")
    figure.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(figure)
