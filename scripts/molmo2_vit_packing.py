"""ViT CPU time of Molmo2-8B's tower (real width, 8 of its 25 blocks) on a 16-frame 378 px video: the stock tower and
connector vs STTS at keep 0.5 (untrained scorer after block 2, bias block 3, blocks 4-7 on frames packed
first-fit-decreasing). fp32, one thread; the LLM is 1 layer with a 2048-token vocabulary (not timed), so it fits
beside other jobs. Run: PYTHONPATH=src:. python scripts/molmo2_vit_packing.py (BENCHMARKS.md, #25)."""
import dataclasses, time, torch
import vtprune
from vtprune.bench.shapes import get_shape, build_model
from vtprune.adapters.spec import image_processor_for
from vtprune.methods.stts import STTS
from vtprune.runtime.vision import run_tower
from tests.conftest import make_image
torch.set_num_threads(1)
s = dataclasses.replace(get_shape("molmo2-8b"), vocab=2048)
model, tok = build_model(s, layers=1, vit_layers=8, dtype=torch.float32, device=torch.device("cpu"))
vlm = vtprune.VLM(model, tok, image_processor_for("molmo2", image_size=378))
frames = [make_image(378, 378, i) for i in range(16)]
batch = vlm.adapter.encode([vtprune.Sample("what moved?", video=frames)])
mi = batch.model_inputs
stts = STTS.untrained(vlm, keep=0.5)
rows = []
layer = vlm.adapter.vision_tower.layers[-1]
h = layer.register_forward_pre_hook(lambda m, a: rows.append(tuple(a[0].shape)))
with torch.no_grad():
    for rep in range(2):
        t0 = time.process_time(); ref = vlm.model.model.get_video_features(mi["pixel_values_videos"], mi["video_token_pooling"], mi["video_grids"]); t1 = time.process_time()
        plan = vlm.adapter.vision_plan(mi["pixel_values_videos"], mi["video_grids"])
        out = run_tower(plan, 2, stts.select, num_layers=1); t2 = time.process_time()
        print(f"rep {rep}: stock tower+connector {t1-t0:.1f} s CPU, STTS keep 0.5 (scorer after block 2, bias block 3, packed blocks 4-7) {t2-t1:.1f} s CPU, ratio {(t2-t1)/(t1-t0):.3f}, kept {int(out.keep.sum())}/{out.keep.numel()}")
h.remove()
print("last block input shapes:", sorted(set(rows)))
