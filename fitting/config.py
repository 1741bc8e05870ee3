"""Configuration of the single-image landmark fitter (:func:`fitting.image.fit_image`).

The energy minimised for one image, over the camera, identity ``i`` and
expression ``e`` (coefficients in the model's units, see :mod:`morphable.model`):

    E = landmark_weight · Σ_k w_k ρ(c · ‖π(X_k(i, e)) − y_k‖)
        + identity_prior_weight · ‖i‖²
        + expression_prior_weight · ‖e‖²          (+ lower ≤ e ≤ upper for blendshapes)

``y_k`` are the 2D landmarks (pixels), ``w_k`` the per-landmark weights, ``π`` the
camera projection and ``ρ`` the squared norm or the Huber function. ``c`` rescales
pixels to a face of ``reference_face_size`` pixels between the outer eye corners
(``c = 1`` when it is ``None``), so the balance between landmarks and priors, and
the Huber threshold, do not depend on the image resolution.

With identity coefficients in standard-deviation units the identity term is the
negative log of the model's N(0, I) prior; read ``landmark_weight /
identity_prior_weight`` as the inverse landmark noise variance (in reference
pixels²) that the prior is traded against.
"""

from __future__ import annotations

from typing import Literal

from flax import struct

__all__ = ["ImageFitConfig", "RobustLoss", "CameraKind"]

RobustLoss = Literal["none", "huber"]
CameraKind = Literal["weak_perspective", "perspective"]


@struct.dataclass(frozen=True)
class ImageFitConfig:
    """Weights and solver settings of :func:`fitting.image.fit_image` (all static, hashable).

    Attributes:
      landmark_weight: weight of the squared landmark reprojection error, per
        (reference) pixel². Default 1.
      identity_prior_weight: weight of ``‖i‖²`` (Gaussian prior on identity
        coefficients in std units). Default 10: the prior of one component equals
        the cost of a 3.2-pixel misfit of one landmark on a face of reference size;
        identity is only weakly observable from 68 points, so a weaker prior lets
        detector noise leak into the shape.
      expression_prior_weight: weight of ``‖e‖²``: the Gaussian prior of a PCA
        expression basis, or the L2 prior of blendshape weights. Default 10.
      enforce_expression_bounds: keep blendshape weights within the model's
        ``[expression_lower, expression_upper]`` (box constraints, solved exactly in
        each linear and Levenberg–Marquardt step). Ignored for PCA bases, whose
        bounds are infinite. Default True.
      robust_loss: ``"none"`` (least squares) or ``"huber"`` (quadratic below
        ``huber_scale``, linear above; solved by iteratively reweighted Gauss–Newton).
      huber_scale: Huber threshold in (reference) pixels. Default 5.
      reference_face_size: outer-eye-corner distance, pixels, to which residuals
        are rescaled before weighting; ``None`` weights raw pixels. Default 100.
      linear_iterations: alternations of the closed-form initialisation (camera
        estimate → identity solve → expression solve → contour update), as eos's
        ``fit_shape_and_pose``. Default 5.
      expression_solver_sweeps: sweeps of projected coordinate descent over the
        blendshape weights in each bounded solve: the expression solve of each
        alternation and, after eliminating camera and identity, each
        Levenberg–Marquardt step. Default 10.
      gauss_newton_iterations: maximum Levenberg–Marquardt iterations of the
        joint refinement of camera, identity and expression. Default 10.
      initial_damping: initial Levenberg–Marquardt damping ``μ`` (relative to the
        diagonal of the normal matrix). Default 1e-3.
      damping_increase, damping_decrease: factors applied to ``μ`` after a
        rejected step or one whose decrease fell short of a quarter of the
        predicted one / after a step that achieved more than three quarters of
        it (Marquardt's gain-ratio rule). Defaults 10 and 0.3.
      tolerance: the refinement stops when an accepted step lowers the energy by
        less than this fraction (or its Gauss–Newton model predicts less). Default
        1e-4: on LFPW faces the energy is then within 2e-6 (relative) of its limit.
      contour_fitting: re-match the outer-contour landmarks (iBUG 1–8, 10–17) to
        the model's contour candidates each iteration (see :mod:`fitting.contour`).
        Default True; models without contour candidates keep their fixed vertices.
      frontal_yaw_degrees: below this absolute yaw both contour sides are
        matched; above it only the side facing the camera, as eos does (the other
        side's landmarks lie on the occluding silhouette, not on the model contour).
        Default 10.
      camera: ``"weak_perspective"`` (scaled orthographic, as eos) or
        ``"perspective"`` (pinhole, initialised from the weak-perspective fit).
      focal_length: focal length of the perspective camera, pixels. Default 1000.
      fit_focal_length: also optimise the focal length (weakly observable from
        landmarks; off by default).
      min_landmarks: fewest usable landmarks for a valid fit. Default 6.
    """

    landmark_weight: float = struct.field(pytree_node=False, default=1.0)
    identity_prior_weight: float = struct.field(pytree_node=False, default=10.0)
    expression_prior_weight: float = struct.field(pytree_node=False, default=10.0)
    enforce_expression_bounds: bool = struct.field(pytree_node=False, default=True)
    robust_loss: RobustLoss = struct.field(pytree_node=False, default="none")
    huber_scale: float = struct.field(pytree_node=False, default=5.0)
    reference_face_size: float | None = struct.field(pytree_node=False, default=100.0)
    linear_iterations: int = struct.field(pytree_node=False, default=5)
    expression_solver_sweeps: int = struct.field(pytree_node=False, default=10)
    gauss_newton_iterations: int = struct.field(pytree_node=False, default=10)
    initial_damping: float = struct.field(pytree_node=False, default=1e-3)
    damping_increase: float = struct.field(pytree_node=False, default=10.0)
    damping_decrease: float = struct.field(pytree_node=False, default=0.3)
    tolerance: float = struct.field(pytree_node=False, default=1e-4)
    contour_fitting: bool = struct.field(pytree_node=False, default=True)
    frontal_yaw_degrees: float = struct.field(pytree_node=False, default=10.0)
    camera: CameraKind = struct.field(pytree_node=False, default="weak_perspective")
    focal_length: float = struct.field(pytree_node=False, default=1000.0)
    fit_focal_length: bool = struct.field(pytree_node=False, default=False)
    min_landmarks: int = struct.field(pytree_node=False, default=6)

    def validate(self) -> "ImageFitConfig":
        """Raise ``ValueError`` naming the offending field; return ``self`` when consistent."""
        for name in ("landmark_weight", "huber_scale", "focal_length", "damping_increase"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"ImageFitConfig.{name}: must be positive, got {getattr(self, name)!r}")
        for name in ("identity_prior_weight", "expression_prior_weight", "initial_damping", "tolerance"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"ImageFitConfig.{name}: must be non-negative, got {getattr(self, name)!r}")
        if not 0 < float(self.damping_decrease) <= 1:
            raise ValueError(f"ImageFitConfig.damping_decrease: must be in (0, 1], got {self.damping_decrease!r}")
        if self.reference_face_size is not None and not float(self.reference_face_size) > 0:
            raise ValueError(
                f"ImageFitConfig.reference_face_size: must be positive or None, got {self.reference_face_size!r}"
            )
        for name in ("linear_iterations", "expression_solver_sweeps", "gauss_newton_iterations", "min_landmarks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"ImageFitConfig.{name}: must be a non-negative int, got {value!r}")
        if self.robust_loss not in ("none", "huber"):
            raise ValueError(f"ImageFitConfig.robust_loss: expected 'none' or 'huber', got {self.robust_loss!r}")
        if self.camera not in ("weak_perspective", "perspective"):
            raise ValueError(
                f"ImageFitConfig.camera: expected 'weak_perspective' or 'perspective', got {self.camera!r}"
            )
        if not 0 <= float(self.frontal_yaw_degrees) <= 90:
            raise ValueError(
                f"ImageFitConfig.frontal_yaw_degrees: must be in [0, 90], got {self.frontal_yaw_degrees!r}"
            )
        return self
