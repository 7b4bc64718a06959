//! The ONNX graphs of `quickdraw export` (opset 18), all ending in the one classifier head
//! ([`classifier_head`]: `logits` -> Softmax `probabilities`, ArgMax `classes`):
//! - `cnn`, `dnn`, `linear`, `baseline`: burn-onnx captures the model's forward pass (dynamic
//!   batch `N`, weights as initialisers); the input is renamed `img_<S>`, the output `logits`.
//! - `rnn`: burn-onnx cannot capture a loop over a dynamic time axis, so the graph is written
//!   here from the LSTM weights: the backward input (each sequence reversed within its length)
//!   and the padding mask are computed from `lengths` in the graph, two forward `LSTM` nodes
//!   (no `sequence_lens`, which tract does not support), masked sums over time, the output layer.
//! - `wide_deep`: the CNN part is captured as for `cnn` (its output renamed `deep_logits`), then
//!   the linear part is written here: input `wide` `[N, W]`, `wide_logits = wide x W + b`,
//!   `logits = deep_logits + wide_logits`.

use burn::nn::activation::Activation;
use burn::nn::{Linear, Lstm};
use burn::tensor::Tensor;
use burn_onnx::export::{AxisSpec, InputSpec, OnnxExporter};
use onnx_ir::{
    AttributeProto, AttributeType, GraphProto, Message, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use quickdraw_data::signature;

use super::{ExportError, Result};
use crate::infer::TrainedModel;
use crate::model::{Model, ModelInput, ModelKind, Rnn, to_host};

/// ONNX operator set of every exported graph.
pub const OPSET: i64 = 18;
const IR_VERSION: i64 = 8;
const ONNX_FLOAT: i32 = 1;
const ONNX_INT64: i32 = 7;

/// `model.onnx` bytes of a loaded model (see the module docs for what each kind becomes).
pub fn build_onnx(tm: &TrainedModel) -> Result<Vec<u8>> {
    let kind = tm.kind();
    let mut model = match tm.model() {
        Model::Rnn(rnn) => rnn_graph(rnn, tm.n_classes())?,
        Model::WideDeep(w) => {
            let mut proto = capture_image_model(tm.model(), tm.image_size(), tm.device())?;
            add_wide_part(&mut proto, &w.wide);
            proto
        }
        m => capture_image_model(m, tm.image_size(), tm.device())?,
    };
    finish_model(&mut model, kind, tm.n_classes());
    let bytes = model
        .write_to_bytes()
        .map_err(|e| ExportError::Onnx(e.to_string()))?;
    Ok(bytes)
}

/// Captures an image model's forward pass with burn-onnx (batch axis `N` dynamic) and names
/// its input `img_<S>` and its output `logits`.
fn capture_image_model(
    model: &Model,
    size: usize,
    device: &burn::tensor::Device,
) -> Result<ModelProto> {
    // A copy whose batch-norm running statistics are its own: burn moves a model's running
    // state to the capture device in place, which would leave the caller's model there.
    let model = &burn::module::Module::valid(model);
    let sample = Tensor::<4>::zeros([2, 1, size, size], device);
    let validation = Tensor::<4>::zeros([3, 1, size, size], device);
    let specs = [InputSpec::new([
        AxisSpec::dynamic("N"),
        AxisSpec::Static,
        AxisSpec::Static,
        AxisSpec::Static,
    ])];
    let onnx = OnnxExporter::new().export_dynamic(
        model,
        sample,
        validation,
        &specs,
        |m: &Model, x: Tensor<4>| match m {
            // The baseline's logits do not depend on the image; a graph output must, so they are
            // written as `0 * sum(pixels) + log_prior` (batch-shaped, exactly the log prior).
            Model::Baseline(b) => {
                let c = b.log_prior.val().dims()[0];
                let zero = x.flatten::<2>(1, 3).sum_dim(1).mul_scalar(0.0); // [N, 1]
                zero + b.log_prior.val().reshape([1, c]) // [N, C]
            }
            // burn's Conv2d in every layer, so the graph has ONNX `Conv` nodes.
            Model::Cnn(c) => c.forward_standard(x),
            // The deep part only; `add_wide_part` adds the linear one.
            Model::WideDeep(w) => w.deep.forward_standard(x),
            m => m.forward(ModelInput::Images(x)),
        },
    )?;
    let mut proto = ModelProto::parse_from_bytes(onnx.as_bytes())
        .map_err(|e| ExportError::Onnx(e.to_string()))?;
    let g = proto.graph.mut_or_insert_default();
    if g.input.len() != 1 || g.output.len() != 1 {
        return Err(ExportError::Onnx(format!(
            "captured graph has {} inputs and {} outputs, expected 1 and 1",
            g.input.len(),
            g.output.len()
        )));
    }
    let key = quickdraw_data::features::image_key(size as u32);
    let old_in = std::mem::replace(&mut g.input[0].name, key.clone());
    let old_out = std::mem::replace(&mut g.output[0].name, signature::LOGITS.to_string());
    for node in &mut g.node {
        for i in node.input.iter_mut().chain(node.output.iter_mut()) {
            if *i == old_in {
                *i = key.clone();
            } else if *i == old_out {
                *i = signature::LOGITS.to_string();
            }
        }
    }
    Ok(proto)
}

/// Turns a captured CNN graph (output `logits`) into the wide & deep one: the CNN's output
/// becomes `deep_logits`, and `logits = deep_logits + (wide x W + b)` with the new input `wide`
/// `[N, W]` and the linear part's weights as initialisers.
fn add_wide_part(proto: &mut ModelProto, wide: &Linear) {
    const DEEP: &str = "deep_logits";
    let g = proto.graph.mut_or_insert_default();
    for n in &mut g.node {
        for name in n.input.iter_mut().chain(n.output.iter_mut()) {
            if name == signature::LOGITS {
                *name = DEEP.to_string();
            }
        }
    }
    let (w, [dim, c], b) = linear_parts(wide);
    g.input.push(value_info(
        signature::WIDE,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Fixed(dim as i64)],
    ));
    g.initializer
        .push(f32_init("quickdraw_wide_weight", &[dim, c], &w));
    g.initializer
        .push(f32_init("quickdraw_wide_bias", &[c], &b));
    g.node.push(node(
        "wide_matmul",
        "MatMul",
        &[signature::WIDE, "quickdraw_wide_weight"],
        &["wide_matmul"],
        vec![],
    ));
    g.node.push(node(
        "wide_logits",
        "Add",
        &["wide_matmul", "quickdraw_wide_bias"],
        &["wide_logits"],
        vec![],
    ));
    g.node.push(node(
        "logits",
        "Add",
        &[DEEP, "wide_logits"],
        &[signature::LOGITS],
        vec![],
    ));
}

/// Fills in the model's metadata and ends its graph, whose only output is `logits` `[N, C]` (or
/// which has no output yet and computes `logits`), with the [`classifier_head`].
fn finish_model(model: &mut ModelProto, kind: ModelKind, n_classes: usize) {
    model.producer_name = "quickdraw".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string =
        format!("QuickDraw {kind} classifier over {n_classes} classes (quickdraw export)");
    let g = model.graph.mut_or_insert_default();
    g.name = format!("quickdraw_{kind}");
    classifier_head(g, n_classes);
}

/// The classifier head of every exported graph: `probabilities` (Softmax) and `classes` (ArgMax,
/// int64) computed from `logits` `[N, C]`; the graph's outputs become these three.
pub fn classifier_head(g: &mut GraphProto, n_classes: usize) {
    g.node.push(node(
        "softmax",
        "Softmax",
        &[signature::LOGITS],
        &[signature::PROBABILITIES],
        vec![int_attr("axis", 1)],
    ));
    g.node.push(node(
        "argmax",
        "ArgMax",
        &[signature::LOGITS],
        &[signature::CLASSES],
        vec![int_attr("axis", 1), int_attr("keepdims", 0)],
    ));
    let rows = || [Dim::Sym("N"), Dim::Fixed(n_classes as i64)];
    g.output.clear();
    g.output
        .push(value_info(signature::LOGITS, ONNX_FLOAT, &rows()));
    g.output
        .push(value_info(signature::PROBABILITIES, ONNX_FLOAT, &rows()));
    g.output
        .push(value_info(signature::CLASSES, ONNX_INT64, &[Dim::Sym("N")]));
}

enum Dim {
    Fixed(i64),
    Sym(&'static str),
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    let mut v = ValueInfoProto::new();
    v.name = name.to_string();
    let tt = v.type_.mut_or_insert_default().mut_tensor_type();
    tt.elem_type = elem_type;
    let shape = tt.shape.mut_or_insert_default();
    for d in dims {
        shape.dim.push(Default::default());
        let last = shape.dim.last_mut().expect("pushed");
        match d {
            Dim::Fixed(v) => last.set_dim_value(*v),
            Dim::Sym(s) => last.set_dim_param(s.to_string()),
        }
    }
    v
}

fn node(
    name: &str,
    op: &str,
    inputs: &[&str],
    outputs: &[&str],
    attribute: Vec<AttributeProto>,
) -> NodeProto {
    let mut n = NodeProto::new();
    n.name = name.to_string();
    n.op_type = op.to_string();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attribute;
    n
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::STRING.into();
    a.s = v.to_string().into();
    a
}

fn tensor_attr(name: &str, t: TensorProto) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    a.type_ = AttributeType::TENSOR.into();
    *a.t.mut_or_insert_default() = t;
    a
}

fn f32_init(name: &str, dims: &[usize], data: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = ONNX_FLOAT;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = data
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    t
}

fn i64_init(name: &str, dims: &[usize], data: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.to_string();
    t.data_type = ONNX_INT64;
    t.dims = dims.iter().map(|&d| d as i64).collect();
    t.raw_data = data
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    t
}

/// Weight `[in, out]` (burn's layout) and bias `[out]` of a linear layer (zeros without bias).
fn linear_parts(l: &Linear) -> (Vec<f32>, [usize; 2], Vec<f32>) {
    let w = l.weight.val();
    let dims = w.dims();
    let bias = l
        .bias
        .as_ref()
        .map(|b| to_host(b.val()))
        .unwrap_or_else(|| vec![0.0; dims[1]]);
    (to_host(w), dims, bias)
}

/// `[in, out]` row-major -> `[out, in]` row-major.
fn transpose(w: &[f32], [rows, cols]: [usize; 2]) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// ONNX `LSTM` weights of one direction: `w [1, 4H, d_in]`, `r [1, 4H, H]`, `b [1, 8H]`, gates
/// in ONNX's order (input, output, forget, cell).
struct OnnxLstm {
    w: Vec<f32>,
    r: Vec<f32>,
    b: Vec<f32>,
    d_in: usize,
    hidden: usize,
}

/// The ONNX `LSTM` weights of a burn LSTM.
fn lstm_weights(l: &Lstm) -> Result<OnnxLstm> {
    if l.input_forget || l.clip.is_some() {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            "coupled input/forget gates or cell clipping".into(),
        ));
    }
    let forget = l
        .forget_gate
        .as_ref()
        .ok_or_else(|| ExportError::Unsupported(ModelKind::Rnn, "no forget gate".into()))?;
    let standard = matches!(l.gate_activation, Activation::Sigmoid(_))
        && matches!(l.cell_activation, Activation::Tanh(_))
        && matches!(l.hidden_activation, Activation::Tanh(_));
    if !standard {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            "LSTM activations other than sigmoid/tanh/tanh".into(),
        ));
    }
    let h = l.d_hidden;
    let (mut w, mut r, mut wb, mut rb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut d_in = 0;
    for g in [&l.input_gate, &l.output_gate, forget, &l.cell_gate] {
        let (iw, idims, ib) = linear_parts(&g.input_transform);
        let (hw, hdims, hb) = linear_parts(&g.hidden_transform);
        d_in = idims[0];
        w.extend(transpose(&iw, idims));
        r.extend(transpose(&hw, hdims));
        wb.extend(ib);
        rb.extend(hb);
    }
    wb.extend(rb);
    Ok(OnnxLstm {
        w,
        r,
        b: wb,
        d_in,
        hidden: h,
    })
}

/// The bidirectional LSTM as an ONNX graph on `strokes [N, T, 3]`, `lengths [N]` -> `logits`
/// (the classifier head and the graph outputs are added by [`finish_model`]).
fn rnn_graph(rnn: &Rnn, n_classes: usize) -> Result<ModelProto> {
    let fwd = lstm_weights(&rnn.forward)?;
    let bwd = lstm_weights(&rnn.backward)?;
    let (d_in, h) = (fwd.d_in, fwd.hidden);
    if (bwd.d_in, bwd.hidden) != (d_in, h) {
        return Err(ExportError::Onnx(
            "the two LSTM directions differ in size".into(),
        ));
    }
    if d_in != 3 {
        return Err(ExportError::Unsupported(
            ModelKind::Rnn,
            format!("LSTM input width {d_in}, the strokes input has 3"),
        ));
    }
    let (ow, odims, ob) = linear_parts(&rnn.output);
    if odims != [2 * h, n_classes] {
        return Err(ExportError::Onnx(format!(
            "output layer is {odims:?}, expected [{}, {n_classes}]",
            2 * h
        )));
    }
    let mut model = ModelProto::new();
    model.ir_version = IR_VERSION;
    model.opset_import.push(Default::default());
    model.opset_import[0].version = OPSET;
    let g = model.graph.mut_or_insert_default();
    let (s, l) = (signature::STROKES, signature::LENGTHS);
    g.input.push(value_info(
        s,
        ONNX_FLOAT,
        &[Dim::Sym("N"), Dim::Sym("T"), Dim::Fixed(3)],
    ));
    g.input.push(value_info(l, ONNX_INT64, &[Dim::Sym("N")]));
    g.initializer.extend([
        f32_init("forward.W", &[1, 4 * h, d_in], &fwd.w),
        f32_init("forward.R", &[1, 4 * h, h], &fwd.r),
        f32_init("forward.B", &[1, 8 * h], &fwd.b),
        f32_init("backward.W", &[1, 4 * h, d_in], &bwd.w),
        f32_init("backward.R", &[1, 4 * h, h], &bwd.r),
        f32_init("backward.B", &[1, 8 * h], &bwd.b),
        f32_init("output.weight", &odims, &ow),
        f32_init("output.bias", &[n_classes], &ob),
        i64_init("c_one", &[1], &[1]),
        i64_init("c_zero", &[], &[0]),
        i64_init("c_one_scalar", &[], &[1]),
        i64_init("c_axis0", &[1], &[0]),
        i64_init("c_axis1", &[1], &[1]),
        i64_init("c_axis2", &[1], &[2]),
        i64_init("c_hidden", &[1], &[h as i64]),
    ]);
    let n = &mut g.node;
    reverse_and_mask(n, s, l);
    zero_states(n);
    for (dir, x) in [("forward", s), ("backward", "reversed")] {
        lstm_direction(n, dir, x, h);
    }
    output_layer(n);
    Ok(model)
}

/// `reversed` (each sequence of `strokes` reversed within its length, the padding left at the
/// end) and `mask` `[N, T, 1]` (1 inside the length) from `lengths`.
fn reverse_and_mask(n: &mut Vec<NodeProto>, s: &str, l: &str) {
    // T = shape(strokes)[1]; t = [0, 1, .., T-1] as [1, T].
    n.push(node("shape", "Shape", &[s], &["shape"], vec![]));
    n.push(node(
        "steps",
        "Gather",
        &["shape", "c_one_scalar"],
        &["steps"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "range",
        "Range",
        &["c_zero", "steps", "c_one_scalar"],
        &["t"],
        vec![],
    ));
    n.push(node(
        "t_row",
        "Unsqueeze",
        &["t", "c_axis0"],
        &["t_row"],
        vec![],
    ));
    // len [N, 1]; valid = t < len; reversed index within the length: len - 1 - t.
    n.push(node(
        "len_col",
        "Unsqueeze",
        &[l, "c_axis1"],
        &["len_col"],
        vec![],
    ));
    n.push(node(
        "valid",
        "Less",
        &["t_row", "len_col"],
        &["valid"],
        vec![],
    ));
    n.push(node(
        "len_m1",
        "Sub",
        &["len_col", "c_one"],
        &["len_m1"],
        vec![],
    ));
    n.push(node("rev", "Sub", &["len_m1", "t_row"], &["rev"], vec![]));
    n.push(node(
        "rev_idx",
        "Where",
        &["valid", "rev", "t_row"],
        &["rev_idx"],
        vec![],
    ));
    n.push(node(
        "rev_idx3",
        "Unsqueeze",
        &["rev_idx", "c_axis2"],
        &["rev_idx3"],
        vec![],
    ));
    n.push(node(
        "rev_idx_x",
        "Expand",
        &["rev_idx3", "shape"],
        &["rev_idx_x"],
        vec![],
    ));
    n.push(node(
        "reversed",
        "GatherElements",
        &[s, "rev_idx_x"],
        &["reversed"],
        vec![int_attr("axis", 1)],
    ));
    // mask [N, T, 1]
    n.push(node(
        "mask2",
        "Cast",
        &["valid"],
        &["mask2"],
        vec![int_attr("to", ONNX_FLOAT as i64)],
    ));
    n.push(node(
        "mask",
        "Unsqueeze",
        &["mask2", "c_axis2"],
        &["mask"],
        vec![],
    ));
}

/// Zero initial LSTM states `state0` `[1, N, H]`.
fn zero_states(n: &mut Vec<NodeProto>) {
    // Zero initial states [1, N, H], given explicitly: tract needs them for a symbolic batch.
    n.push(node(
        "batch",
        "Gather",
        &["shape", "c_axis0"],
        &["batch"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "state_shape",
        "Concat",
        &["c_one", "batch", "c_hidden"],
        &["state_shape"],
        vec![int_attr("axis", 0)],
    ));
    n.push(node(
        "state0",
        "ConstantOfShape",
        &["state_shape"],
        &["state0"],
        vec![tensor_attr("value", f32_init("", &[1], &[0.0]))],
    ));
}

/// One direction: a forward `LSTM` over `x` `[N, T, 3]`, outputs in the padding zeroed and
/// summed over time -> `<dir>_sum` `[N, H]`.
fn lstm_direction(n: &mut Vec<NodeProto>, dir: &str, x: &str, h: usize) {
    let names = |suffix: &str| format!("{dir}_{suffix}");
    let (xt, y, y3, yb, ym, hsum) = (
        names("x"),
        names("y"),
        names("y3"),
        names("yb"),
        names("ym"),
        names("sum"),
    );
    let (w, r, b) = (format!("{dir}.W"), format!("{dir}.R"), format!("{dir}.B"));
    // [N, T, 3] -> [T, N, 3] -> LSTM Y [T, 1, N, H] -> [T, N, H] -> [N, T, H]
    n.push(node(
        &xt,
        "Transpose",
        &[x],
        &[&xt],
        vec![ints_attr("perm", &[1, 0, 2])],
    ));
    n.push(node(
        &y,
        "LSTM",
        &[&xt, &w, &r, &b, "", "state0", "state0"],
        &[&y],
        vec![
            int_attr("hidden_size", h as i64),
            string_attr("direction", "forward"),
        ],
    ));
    n.push(node(&y3, "Squeeze", &[&y, "c_one"], &[&y3], vec![]));
    n.push(node(
        &yb,
        "Transpose",
        &[&y3],
        &[&yb],
        vec![ints_attr("perm", &[1, 0, 2])],
    ));
    // Outputs in the padding zeroed, summed over time -> [N, H]
    n.push(node(&ym, "Mul", &[&yb, "mask"], &[&ym], vec![]));
    n.push(node(
        &hsum,
        "ReduceSum",
        &[&ym, "c_one"],
        &[&hsum],
        vec![int_attr("keepdims", 0)],
    ));
}

/// The output layer on the two directions' sums -> `logits`.
fn output_layer(n: &mut Vec<NodeProto>) {
    n.push(node(
        "features",
        "Concat",
        &["forward_sum", "backward_sum"],
        &["features"],
        vec![int_attr("axis", 1)],
    ));
    n.push(node(
        "matmul",
        "MatMul",
        &["features", "output.weight"],
        &["matmul"],
        vec![],
    ));
    n.push(node(
        "logits",
        "Add",
        &["matmul", "output.bias"],
        &[signature::LOGITS],
        vec![],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_is_row_major() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], [2, 3]),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }

    #[test]
    fn the_head_replaces_the_outputs_with_the_contract_s_three() {
        let mut g = GraphProto::new();
        g.output
            .push(value_info("logits", ONNX_FLOAT, &[Dim::Sym("N")]));
        classifier_head(&mut g, 4);
        let names: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            names,
            [
                signature::LOGITS,
                signature::PROBABILITIES,
                signature::CLASSES
            ]
        );
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Softmax", "ArgMax"]);
    }
}
