"""Model I/O: the default ICT-FaceKit model, eos/SFM, licensed formats, native files and meshes."""

from morphable.io.bfm import load_bfm2009, load_bfm2017
from morphable.io.eos import load_sfm
from morphable.io.flame import load_flame
from morphable.io.ict import load_ict
from morphable.io.lsfm import load_lsfm
from morphable.io.mesh import export_mesh
from morphable.io.native import load_model, save_model

__all__ = [
    "load_ict",
    "load_sfm",
    "load_bfm2009",
    "load_bfm2017",
    "load_flame",
    "load_lsfm",
    "load_model",
    "save_model",
    "export_mesh",
]
