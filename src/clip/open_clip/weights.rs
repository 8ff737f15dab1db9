//! open_clip's state dict → the tensors the towers load, under transformers' CLIP names: the towers are
//! written once, against HF's layout. The differences are names, the fused `in_proj` of
//! `nn.MultiheadAttention` (q, k and v stacked, split here), and the projections, which open_clip stores as
//! `x @ proj` ([in, out]) where a linear layer stores [out, in].

use anyhow::{Context, bail};
use candle_core::Tensor;
use std::collections::HashMap;

/// Tensors that exist in open_clip's state dict but not in an embedding model: the similarity's scale and
/// bias, and the causal mask, a constant that older open_clip versions saved with the weights.
const UNUSED: [&str; 4] = ["logit_scale", "logit_bias", "attn_mask", "text.attn_mask"];

/// Renames (and splits, transposes) `tensors`; `custom_text`: the text tower is under `text.`. Every tensor
/// must be used: one this mapping does not know means an architecture it does not know.
pub fn to_hf_names(tensors: Vec<(String, Tensor)>, custom_text: bool) -> anyhow::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::with_capacity(tensors.len() + tensors.len() / 4);
    let mut unknown = Vec::new();
    for (name, tensor) in tensors {
        if UNUSED.contains(&name.as_str()) {
            continue;
        }
        let mapped = match name.strip_prefix("visual.") {
            Some(rest) => vision_name(rest),
            None => {
                let rest = if custom_text { name.strip_prefix("text.") } else { Some(name.as_str()) };
                rest.and_then(text_name)
            }
        };
        match mapped {
            Some(Mapped::Same(hf)) => {
                out.insert(hf, tensor);
            }
            Some(Mapped::Transposed(hf)) => {
                let t = tensor.t().and_then(|t| t.contiguous()).with_context(|| format!("tensor `{name}`"))?;
                out.insert(hf, t);
            }
            Some(Mapped::InProj { prefix, what }) => {
                let rows = tensor.dim(0).with_context(|| format!("tensor `{name}`"))?;
                if !rows.is_multiple_of(3) {
                    bail!("tensor `{name}` has {rows} rows, not q, k and v stacked");
                }
                let d = rows / 3;
                for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let t = tensor.narrow(0, i * d, d).and_then(|t| t.contiguous())?;
                    out.insert(format!("{prefix}.self_attn.{part}.{what}"), t);
                }
            }
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        let shown: Vec<&str> = unknown.iter().take(8).map(String::as_str).collect();
        bail!(
            "the weights hold {} tensors that a ViT CLIP in open_clip's layout does not have ({}{}): another \
             architecture, or a config that does not match them",
            unknown.len(),
            shown.join(", "),
            if unknown.len() > shown.len() { ", ..." } else { "" }
        );
    }
    Ok(out)
}

enum Mapped {
    Same(String),
    Transposed(String),
    /// `in_proj_weight` / `in_proj_bias` of layer `prefix`: `what` is "weight" or "bias".
    InProj {
        prefix: String,
        what: &'static str,
    },
}

fn vision_name(rest: &str) -> Option<Mapped> {
    let same = |s: &str| Some(Mapped::Same(format!("vision_model.{s}")));
    match rest {
        "conv1.weight" => same("embeddings.patch_embedding.weight"),
        "class_embedding" => same("embeddings.class_embedding"),
        "positional_embedding" => same("embeddings.position_embedding.weight"),
        "ln_pre.weight" => same("pre_layrnorm.weight"),
        "ln_pre.bias" => same("pre_layrnorm.bias"),
        "ln_post.weight" => same("post_layernorm.weight"),
        "ln_post.bias" => same("post_layernorm.bias"),
        "proj" => Some(Mapped::Transposed("visual_projection.weight".into())),
        _ => layer_name(rest, "vision_model.encoder"),
    }
}

fn text_name(rest: &str) -> Option<Mapped> {
    let same = |s: &str| Some(Mapped::Same(format!("text_model.{s}")));
    match rest {
        "token_embedding.weight" => same("embeddings.token_embedding.weight"),
        "positional_embedding" => same("embeddings.position_embedding.weight"),
        "ln_final.weight" => same("final_layer_norm.weight"),
        "ln_final.bias" => same("final_layer_norm.bias"),
        "text_projection" => Some(Mapped::Transposed("text_projection.weight".into())),
        _ => layer_name(rest, "text_model.encoder"),
    }
}

/// `transformer.resblocks.N.<part>` → `<encoder>.layers.N.<HF part>`.
fn layer_name(rest: &str, encoder: &str) -> Option<Mapped> {
    let rest = rest.strip_prefix("transformer.resblocks.")?;
    let (index, part) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let prefix = format!("{encoder}.layers.{index}");
    let hf = match part {
        "attn.in_proj_weight" => return Some(Mapped::InProj { prefix, what: "weight" }),
        "attn.in_proj_bias" => return Some(Mapped::InProj { prefix, what: "bias" }),
        "ln_1.weight" => "layer_norm1.weight",
        "ln_1.bias" => "layer_norm1.bias",
        "ln_2.weight" => "layer_norm2.weight",
        "ln_2.bias" => "layer_norm2.bias",
        "attn.out_proj.weight" => "self_attn.out_proj.weight",
        "attn.out_proj.bias" => "self_attn.out_proj.bias",
        "mlp.c_fc.weight" => "mlp.fc1.weight",
        "mlp.c_fc.bias" => "mlp.fc1.bias",
        "mlp.c_proj.weight" => "mlp.fc2.weight",
        "mlp.c_proj.bias" => "mlp.fc2.bias",
        _ => return None,
    };
    Some(Mapped::Same(format!("{prefix}.{hf}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_split_and_transpose_as_hf_lays_them_out() {
        let t = |v: Vec<f32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        let tensors = vec![
            ("visual.proj".to_string(), t(vec![1., 2., 3., 4., 5., 6.], (2, 3))),
            ("transformer.resblocks.11.attn.in_proj_weight".to_string(), t((0..6).map(|x| x as f32).collect(), (3, 2))),
            ("logit_scale".to_string(), Tensor::new(4.6f32, &Device::Cpu).unwrap()),
        ];
        let m = to_hf_names(tensors, false).unwrap();
        assert_eq!(
            m["visual_projection.weight"].to_vec2::<f32>().unwrap(),
            vec![vec![1., 4.], vec![2., 5.], vec![3., 6.]]
        );
        let k = &m["text_model.encoder.layers.11.self_attn.k_proj.weight"];
        assert_eq!(k.to_vec2::<f32>().unwrap(), vec![vec![2., 3.]]);
        assert_eq!(m.len(), 4);
        let e = to_hf_names(vec![("visual.attn_pool.query".into(), t(vec![0.], (1, 1)))], false).unwrap_err();
        assert!(format!("{e:#}").contains("visual.attn_pool.query"), "{e:#}");
        let m = to_hf_names(vec![("text.ln_final.bias".into(), t(vec![0.], (1, 1)))], true).unwrap();
        assert!(m.contains_key("text_model.final_layer_norm.bias"));
    }
}
