"""Regenerates src/clip/open_clip_table.rs from an open_clip checkout: the pretrained tags of the architectures
dsmake's CLIP runs, and their model configs. Usage (open_clip's pretrained.py imports its package's constants, so
it is loaded from a copy whose relative imports are made absolute):

    R=path/to/open_clip; mkdir -p /tmp/oc && cp $R/src/open_clip/{pretrained,constants}.py /tmp/oc/ \
      && sed -i 's/^from \.constants import/from constants import/; s/^from \.version import __version__/__version__="x"/' /tmp/oc/pretrained.py \
      && (cd /tmp/oc && OPEN_CLIP=$R python3 $OLDPWD/scripts/gen-open-clip-table.py $OLDPWD/src/clip/open_clip_table.rs)
"""
import os, sys
import json, subprocess, pretrained as p
R=os.environ["OPEN_CLIP"]
ARCHS=["ViT-B-32","ViT-B-32-256","ViT-B-16","ViT-B-16-plus-240","ViT-L-14","ViT-L-14-336","ViT-H-14","ViT-H-14-378",
"ViT-g-14","ViT-bigG-14","ViT-L-14-CLIPA","ViT-L-14-CLIPA-336","ViT-H-14-CLIPA","ViT-H-14-CLIPA-336","ViT-bigG-14-CLIPA","ViT-bigG-14-CLIPA-336"]
commit=subprocess.check_output(["git","-C",R,"rev-parse","HEAD"]).decode().strip()
out=[]
out.append("//! open_clip's pretrained table (`src/open_clip/pretrained.py`) and model configs (`src/open_clip/model_configs/`)")
out.append("//! for the architectures dsmake's CLIP runs: ViTs with OpenAI's text tower or CLIPA's. Data only, generated")
out.append(f"//! from open_clip at commit {commit[:12]}; `names` reads it. Architectures left out (ResNet, ConvNeXt, EVA,")
out.append("//! SigLIP, CoCa, MobileCLIP, RoBERTa/NLLB text towers, …) are refused by name.")
out.append("")
out.append("/// (architecture, `model_cfg` as open_clip's model_configs/ARCH.json holds it).")
out.append("pub const ARCHS: &[(&str, &str)] = &[")
for a in ARCHS:
    cfg=json.loads(subprocess.check_output(["git","-C",R,"show",f"HEAD:src/open_clip/model_configs/{a}.json"]))
    out.append(f'    ("{a}", r#"{json.dumps(cfg,separators=(",",":"))}"#),')
out.append("];")
out.append("")
out.append("/// One pretrained tag: architecture, tag, Hub repo (weights `open_clip_model.safetensors`, else")
out.append("/// `open_clip_pytorch_model.bin`), trained with QuickGELU, mean, std, interpolation, resize mode.")
out.append("pub struct Tag {")
out.append("    pub arch: &'static str,\n    pub tag: &'static str,\n    pub repo: &'static str,\n    pub quick_gelu: bool,\n    pub mean: [f64; 3],\n    pub std: [f64; 3],\n    pub interpolation: &'static str,\n    pub resize_mode: &'static str,\n}")
out.append("")
out.append("pub const TAGS: &[Tag] = &[")
def f3(t): return "["+", ".join(repr(float(x)) for x in t)+"]"
n=0
for a in ARCHS+[a+"-quickgelu" for a in ARCHS]:
    for t,c in p._PRETRAINED.get(a,{}).items():
        hub=c['hf_hub']
        assert hub.endswith('/'), (a,t,hub)
        extra=set(c)-{'url','hf_hub','mean','std','interpolation','resize_mode','quick_gelu'}
        assert not extra,(a,t,extra)
        out.append(f'    Tag {{ arch: "{a}", tag: "{t}", repo: "{hub[:-1]}", quick_gelu: {str(bool(c.get("quick_gelu"))).lower()}, mean: {f3(c["mean"])}, std: {f3(c["std"])}, interpolation: "{c["interpolation"]}", resize_mode: "{c["resize_mode"]}" }},')
        n+=1
out.append("];")
open(sys.argv[1],"w").write("\n".join(out)+"\n")
print(n, "tags")
