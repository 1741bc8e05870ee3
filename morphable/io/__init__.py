"""Model I/O: the default ICT-FaceKit model, eos/SFM, licensed formats, native files and meshes."""

from morphable.io.ict import load_ict
from morphable.io.mesh import export_mesh
from morphable.io.native import load_model, save_model

__all__ = ["load_ict", "load_model", "save_model", "export_mesh"]
