//! Reverse-mode autodiff over the graph that ops record while grad is enabled.
//!
//! Only tensors that require grad carry history: trainable leaves (see
//! [`Tensor::into_var`]) and results computed from them. Frozen weights and inputs record
//! nothing, so a frozen base model keeps no graph at all. [`checkpoint`] runs a segment
//! without recording and recomputes it during backward.

use crate::offload::HostCopy;
use crate::{ops, Result, Tensor, TensorId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

/// The backward rule of one recorded op. Implemented next to each op's forward.
pub trait Backward: Send + Sync {
    fn name(&self) -> &'static str;
    /// The op's tensor inputs, in the order `backward` returns their gradients.
    fn inputs(&self) -> Vec<Tensor>;
    /// Gradients of the inputs given the gradient of the output (`None` where an input
    /// needs none). `store` receives gradients of leaves reached by nested graphs
    /// (used by [`checkpoint`]); ordinary ops ignore it.
    fn backward(&self, grad: &Tensor, store: &mut GradStore) -> Result<Vec<Option<Tensor>>>;
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Disables recording until dropped (inference mode).
pub struct NoGradGuard {
    prev: bool,
}

pub fn no_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { prev }
}

/// Re-enables recording until dropped (inside a backward that recomputes a graph).
pub(crate) fn enable_grad() -> NoGradGuard {
    let prev = GRAD_ENABLED.with(|g| g.replace(true));
    NoGradGuard { prev }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}

/// Gradients of the leaves that required grad, keyed by tensor identity.
#[derive(Default)]
pub struct GradStore(HashMap<TensorId, Tensor>);

impl GradStore {
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.0.get(&t.id())
    }
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.0.remove(&t.id())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Adds `g` to the gradient stored for `id`.
    pub fn accumulate(&mut self, id: TensorId, g: Tensor) -> Result<()> {
        let g = match self.0.remove(&id) {
            Some(prev) => ops::add(&prev, &g)?,
            None => g,
        };
        self.0.insert(id, g);
        Ok(())
    }
    fn merge(&mut self, other: GradStore) -> Result<()> {
        for (id, g) in other.0 {
            self.accumulate(id, g)?;
        }
        Ok(())
    }
}

impl Tensor {
    /// Backpropagates from this scalar (a seed gradient of one).
    pub fn backward(&self) -> Result<GradStore> {
        let seed = ops::ones_like(self)?;
        backward_from(self, &seed)
    }
}

/// Backpropagates `seed` (the gradient of some scalar with respect to `root`) through the
/// recorded graph and returns the gradients of every leaf that requires grad.
pub fn backward_from(root: &Tensor, seed: &Tensor) -> Result<GradStore> {
    let _guard = no_grad();
    let order = topo_order(root);
    let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
    pending.insert(root.id(), seed.clone());
    let mut leaves = GradStore::default();
    for t in order {
        let Some(grad) = pending.remove(&t.id()) else { continue };
        let Some(f) = t.grad_fn() else {
            leaves.accumulate(t.id(), grad)?;
            continue;
        };
        let inputs = f.inputs();
        let grads = f.backward(&grad, &mut leaves)?;
        drop(grad);
        for (input, g) in inputs.iter().zip(grads) {
            let Some(g) = g else { continue };
            if !input.requires_grad() {
                continue;
            }
            let g = match pending.remove(&input.id()) {
                Some(prev) => ops::add(&prev, &g)?,
                None => g,
            };
            pending.insert(input.id(), g);
        }
    }
    Ok(leaves)
}

/// Tensors that require grad reachable from `root`, each after all its consumers.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // Iterative post-order DFS: deep graphs (many layers) must not overflow the stack.
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let inputs = t.grad_fn().map(|f| f.inputs()).unwrap_or_default();
        stack.push((t, true));
        for i in inputs {
            if i.requires_grad() && !seen.contains(&i.id()) {
                stack.push((i, false));
            }
        }
    }
    order.reverse();
    order
}

/// A segment run without keeping its activations; backward recomputes it.
pub type Segment = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

/// Runs `f(inputs)` without recording its inner graph. Only `inputs` are kept; in
/// backward the segment runs again with grad on, and the gradients it yields for leaves
/// captured by `f` (LoRA weights) go to the outer store.
pub fn checkpoint(inputs: &[Tensor], f: Segment) -> Result<Tensor> {
    checkpoint_with(inputs, f, false)
}

/// [`checkpoint`] whose kept inputs wait in pinned host memory instead of on the GPU
/// (Unsloth's "unsloth" gradient checkpointing): copied out on the copy stream while the
/// segment runs, and copied back for the recompute, the previous segment's input being
/// fetched while this one's backward runs. On the CPU it is [`checkpoint`].
pub fn checkpoint_offloaded(inputs: &[Tensor], f: Segment) -> Result<Tensor> {
    checkpoint_with(inputs, f, true)
}

fn checkpoint_with(inputs: &[Tensor], f: Segment, offload: bool) -> Result<Tensor> {
    let offload = offload && is_grad_enabled() && inputs.iter().any(|t| !t.device().is_cpu());
    let parked = match offload {
        true => Some(Parked::start(inputs)?),
        false => None,
    };
    let out = {
        let _g = no_grad();
        f(inputs)?
    };
    if !is_grad_enabled() {
        return Ok(out);
    }
    // With the values parked, the graph keeps only the inputs' identities.
    let kept = match &parked {
        Some(_) => inputs.iter().map(Tensor::shell).collect(),
        None => inputs.to_vec(),
    };
    let node = Arc::new(CheckpointBackward { inputs: kept, f, parked });
    // The segment may capture trainable leaves, so the output is tracked even when no
    // input requires grad.
    Ok(out.with_grad_state(true, Some(node)))
}

thread_local! {
    /// The inputs parked by the latest offloaded checkpoint: the next one links to them, so
    /// that its backward (which runs just before theirs) can start fetching them.
    static LAST_PARKED: RefCell<Weak<Parked>> = const { RefCell::new(Weak::new()) };
}

/// Checkpoint inputs in pinned host memory.
struct Parked {
    copies: Vec<HostCopy>,
    /// Brought back ahead of time by the next segment's backward.
    fetched: Mutex<Option<Vec<Tensor>>>,
    previous: Weak<Parked>,
}

impl Parked {
    fn start(inputs: &[Tensor]) -> Result<Arc<Parked>> {
        let copies = inputs.iter().map(HostCopy::start).collect::<Result<Vec<_>>>()?;
        let previous = LAST_PARKED.with(|l| l.borrow().clone());
        let p = Arc::new(Parked { copies, fetched: Mutex::new(None), previous });
        LAST_PARKED.with(|l| *l.borrow_mut() = Arc::downgrade(&p));
        Ok(p)
    }

    /// Starts bringing the values back (once).
    fn fetch(&self) -> Result<()> {
        let mut slot = self.fetched.lock().expect("parked inputs poisoned");
        if slot.is_none() {
            *slot = Some(self.copies.iter().map(HostCopy::restore).collect::<Result<Vec<_>>>()?);
        }
        Ok(())
    }

    /// The values on the device (fetched now if they were not already).
    fn take(&self) -> Result<Vec<Tensor>> {
        self.fetch()?;
        Ok(self.fetched.lock().expect("parked inputs poisoned").take().expect("fetched above"))
    }
}

struct CheckpointBackward {
    /// The inputs (or, when parked, tensors with only their identity and history).
    inputs: Vec<Tensor>,
    f: Segment,
    parked: Option<Arc<Parked>>,
}

impl Backward for CheckpointBackward {
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    fn inputs(&self) -> Vec<Tensor> {
        self.inputs.clone()
    }
    fn backward(&self, grad: &Tensor, store: &mut GradStore) -> Result<Vec<Option<Tensor>>> {
        let values = match &self.parked {
            Some(p) => {
                let values = p.take()?;
                // The previous segment's backward comes next: its inputs travel meanwhile.
                if let Some(prev) = p.previous.upgrade() {
                    prev.fetch()?;
                }
                values
            }
            None => self.inputs.clone(),
        };
        let fresh: Vec<Tensor> = values
            .iter()
            .zip(&self.inputs)
            .map(|(v, t)| if t.requires_grad() { v.detach().into_var() } else { v.detach() })
            .collect();
        let out = {
            let _g = enable_grad();
            (self.f)(&fresh)?
        };
        if !out.requires_grad() {
            return Ok(vec![None; fresh.len()]);
        }
        let mut inner = backward_from(&out, grad)?;
        let input_grads = fresh.iter().map(|t| inner.remove(t)).collect();
        store.merge(inner)?;
        Ok(input_grads)
    }
}
