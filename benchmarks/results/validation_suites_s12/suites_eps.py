import os, runpy, sys
sys.path.insert(0, "/work/main/training")
import napari_cdd_dehaze.working_scale as ws
ws.GUIDED_UPSAMPLE_EPS = float(os.environ["GU_EPS"])
sys.argv = ["validation_suites.py", *sys.argv[1:]]
runpy.run_path("/work/main/training/validation_suites.py", run_name="__main__")
