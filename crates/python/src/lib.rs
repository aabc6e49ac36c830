//! `speechtune._native`, the compiled half of the Python package: the same library calls as the
//! CLI (`features`, `inspect`, `train`, `eval`, `transcribe`, `identify`), with numpy arrays in
//! and out (the functions `transcribe`/`identify` are `Recognizer`'s methods, in `__init__.py`). Every call that computes releases the GIL; errors become `speechtune.SpeechtuneError`
//! with the CLI's message. `python/speechtune/__init__.py` re-exports what is here.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, anyhow, bail};
use burn::prelude::*;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyUntypedArrayMethods};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyTuple};
use speechtune_train::infer::{Mode, Options, Output, Recognizer as Inner};

pyo3::create_exception!(
    _native,
    SpeechtuneError,
    PyException,
    "A speechtune operation failed: unreadable or invalid files, configurations or arguments. The message is the CLI's."
);

/// An error of the Rust side as a Python exception, with its whole chain of causes.
fn py_err(e: anyhow::Error) -> PyErr {
    SpeechtuneError::new_err(speechtune_models::one_line(e.as_ref()))
}

fn device(spec: &str) -> PyResult<Device> {
    speechtune_models::parse_device(Some(spec)).map_err(|e| py_err(e.into()))
}

/// `precision="f32"` or `"bf16"` (mixed precision of the frozen projections' products).
fn precision(spec: &str) -> PyResult<speechtune_models::Precision> {
    spec.parse().map_err(|e: String| PyValueError::new_err(format!("precision={spec:?}: {e}")))
}

/// A path argument: `str` or any `os.PathLike`.
fn path_of(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PathBuf> {
    obj.extract::<PathBuf>().map_err(|_| {
        PyTypeError::new_err(format!("{what}: expected a path (str or os.PathLike), got {}", type_name(obj)))
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// One audio argument, resolved while holding the GIL: a file to read, or samples.
enum Audio {
    File(PathBuf),
    Samples(Vec<f32>),
}

impl Audio {
    fn from_py(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.cast::<numpy::PyUntypedArray>() {
            if a.ndim() != 1 {
                return Err(PyValueError::new_err(format!(
                    "audio: expected mono samples (a 1-D array at 16 kHz), got an array of shape {:?}",
                    a.shape()
                )));
            }
            if let Ok(a) = obj.extract::<PyReadonlyArray1<f32>>() {
                return Ok(Audio::Samples(a.as_array().to_vec()));
            }
            if let Ok(a) = obj.extract::<PyReadonlyArray1<f64>>() {
                return Ok(Audio::Samples(a.as_array().iter().map(|&x| x as f32).collect()));
            }
            return Err(PyTypeError::new_err(format!(
                "audio: expected float32 samples at 16 kHz, got dtype {}",
                a.dtype()
            )));
        }
        if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            return Err(PyTypeError::new_err(
                "audio: expected one file path or one numpy array (for several, pass a list to transcribe/identify)",
            ));
        }
        Ok(Audio::File(path_of(obj, "audio")?))
    }

    /// Samples at 16 kHz mono (a file decoded and resampled as the CLI does).
    fn load(self) -> anyhow::Result<Vec<f32>> {
        match self {
            Audio::File(p) => speechtune_audio::load_mono_16k(&p).with_context(|| format!("reading {}", p.display())),
            Audio::Samples(s) => {
                if let Some(i) = s.iter().position(|x| !x.is_finite()) {
                    bail!("audio: sample {i} is {} (samples must be finite)", s[i]);
                }
                Ok(s)
            }
        }
    }
}

/// A single audio or a list of them; `true` when a list was given.
fn audio_list(obj: &Bound<'_, PyAny>) -> PyResult<(Vec<Audio>, bool)> {
    if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
        let items: Vec<Bound<'_, PyAny>> = obj.try_iter()?.collect::<PyResult<_>>()?;
        return Ok((items.iter().map(Audio::from_py).collect::<PyResult<_>>()?, true));
    }
    Ok((vec![Audio::from_py(obj)?], false))
}

/// A value serialised by serde, as Python objects (through the `json` module: dicts, lists,
/// numbers, strings, None).
fn to_python<'py>(py: Python<'py>, value: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| py_err(e.into()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A pretrained upstream (wav2vec2, XLS-R, HuBERT, data2vec-audio, WavLM, Whisper's encoder).
///
/// `Upstream(model, device="cpu", transformers=4)`: a Hugging Face model folder, a Hub id
/// (`owner/name[@revision]`, downloaded into the Hugging Face cache) or `builtin:tiny-pretrained`.
/// `transformers` picks whose `output_hidden_states` to reproduce for pre-LN encoders (4 or 5);
/// `precision="bf16"` runs the projections' products with bf16 inputs and f32 sums.
///
/// (Boxed fields: PyO3 places a class's value inside the Python object, whose memory is only
/// 16-byte aligned, while the model's types ask for more.)
#[pyclass(module = "speechtune")]
struct Upstream {
    inner: Box<speechtune_models::Upstream>,
    device: Box<Device>,
    source: String,
}

#[pymethods]
impl Upstream {
    #[new]
    #[pyo3(signature = (model, device = "cpu", transformers = 4, precision = "f32"))]
    fn new(
        py: Python<'_>,
        model: &Bound<'_, PyAny>,
        device: &str,
        transformers: u32,
        precision: &str,
    ) -> PyResult<Self> {
        let path = path_of(model, "model")?;
        let dev = self::device(device)?;
        let precision = self::precision(precision)?;
        let inner = py
            .detach(|| -> anyhow::Result<_> {
                let mut up = speechtune_models::Upstream::open(&path, &dev)
                    .with_context(|| format!("loading model from {}", path.display()))?;
                up.model.hidden_states_like_transformers(transformers)?;
                up.model.set_precision(precision);
                Ok(up)
            })
            .map_err(py_err)?;
        Ok(Self { inner: Box::new(inner), device: Box::new(dev), source: path.display().to_string() })
    }

    /// Every hidden state for one audio (a file path, or float32 samples at 16 kHz): a list of
    /// `layers + 1` arrays of shape `[frames, hidden_size]`, as transformers'
    /// `output_hidden_states`. `unpadded`: Whisper only, the audio alone instead of a 30-s window.
    #[pyo3(signature = (audio, *, unpadded = false))]
    fn features<'py>(
        &self,
        py: Python<'py>,
        audio: &Bound<'py, PyAny>,
        unpadded: bool,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let audio = Audio::from_py(audio)?;
        let states = py
            .detach(|| -> anyhow::Result<Vec<(Vec<f32>, [usize; 2])>> {
                let wave = audio.load()?;
                let frontend =
                    if unpadded { self.inner.frontend.clone().unpadded() } else { self.inner.frontend.clone() };
                let out = self.inner.model.forward(frontend.prepare(std::slice::from_ref(&wave), &self.device)?)?;
                let frames = out.frame_lengths[0];
                out.hidden_states
                    .into_iter()
                    .map(|h| {
                        let dim = h.dims()[2];
                        let v = h.narrow(1, 0, frames).into_data().convert::<f32>().try_into_vec::<f32>();
                        Ok((v.map_err(|e| anyhow!("{e:?}"))?, [frames, dim]))
                    })
                    .collect()
            })
            .map_err(py_err)?;
        states.into_iter().map(|(v, shape)| Ok(PyArray1::from_vec(py, v).reshape(shape)?.into_any())).collect()
    }

    /// The model's architecture as a dict: model_type, layers, hidden_size, samples_per_frame,
    /// frames_per_second, sample_rate, parameters (total) and parameters per component.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = &self.inner.model;
        let d = PyDict::new(py);
        d.set_item("source", &self.source)?;
        d.set_item("model_type", self.inner.config.model_type())?;
        d.set_item("layers", m.num_layers())?;
        d.set_item("hidden_states", m.num_layers() + 1)?;
        d.set_item("hidden_size", m.hidden_size())?;
        d.set_item("samples_per_frame", m.downsampling())?;
        d.set_item("frames_per_second", 16000.0 / m.downsampling() as f64)?;
        d.set_item("sample_rate", 16000)?;
        let rows = m.parameter_breakdown();
        d.set_item("parameters", rows.iter().map(|r| r.1).sum::<usize>())?;
        let parts = PyDict::new(py);
        for (name, n) in rows {
            parts.set_item(name, n)?;
        }
        d.set_item("parameters_by_component", parts)?;
        d.set_item("weights_prefix", &self.inner.prefix)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Upstream({:?}: {}, {} layers × {})",
            self.source,
            self.inner.config.model_type(),
            self.inner.model.num_layers(),
            self.inner.model.hidden_size()
        )
    }
}

/// A trained run, a `train --per-language` folder or a Whisper model, loaded once to transcribe
/// or identify many files: `Recognizer(model, device="cpu", precision="f32")`.
#[pyclass(module = "speechtune")]
struct Recognizer {
    inner: Box<Mutex<Inner>>,
    device: Box<Device>,
}

impl Recognizer {
    fn open(py: Python<'_>, model: &Bound<'_, PyAny>, device: &str, precision: &str) -> PyResult<Self> {
        let path = path_of(model, "model")?;
        let dev = self::device(device)?;
        let precision = self::precision(precision)?;
        let inner = py
            .detach(|| Inner::open(&path, &dev, precision).with_context(|| format!("loading {}", path.display())))
            .map_err(py_err)?;
        Ok(Self { inner: Box::new(Mutex::new(inner)), device: Box::new(dev) })
    }

    /// Run over the audio, `batch` files at a time; one dict per file (or one, for one file).
    fn run<'py>(
        &self,
        py: Python<'py>,
        mode: Mode,
        audio: &Bound<'py, PyAny>,
        o: &Options,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (audio, many) = audio_list(audio)?;
        let outputs = py
            .detach(|| -> anyhow::Result<Vec<Output>> {
                let mut inner = self.inner.lock().map_err(|_| anyhow!("an earlier call on this model panicked"))?;
                let mut out = Vec::with_capacity(audio.len());
                let mut audio = audio.into_iter().peekable();
                while audio.peek().is_some() {
                    let waves =
                        audio.by_ref().take(batch.max(1)).map(Audio::load).collect::<anyhow::Result<Vec<_>>>()?;
                    out.extend(inner.run(mode, &waves, o, &self.device)?);
                }
                Ok(out)
            })
            .map_err(py_err)?;
        let dicts = outputs
            .into_iter()
            .map(|o| {
                let d = PyDict::new(py);
                match mode {
                    Mode::Transcribe => {
                        d.set_item("text", o.text)?;
                        d.set_item("language", o.label)?;
                    }
                    Mode::Identify => {
                        d.set_item("label", o.label)?;
                        d.set_item("probability", o.probability)?;
                    }
                }
                Ok(d.into_any())
            })
            .collect::<PyResult<Vec<_>>>()?;
        if many { Ok(PyList::new(py, dicts)?.into_any()) } else { Ok(dicts.into_iter().next().expect("one file")) }
    }
}

#[pymethods]
impl Recognizer {
    #[new]
    #[pyo3(signature = (model, device = "cpu", precision = "f32"))]
    fn new(py: Python<'_>, model: &Bound<'_, PyAny>, device: &str, precision: &str) -> PyResult<Self> {
        Self::open(py, model, device, precision)
    }

    /// Transcribe one audio (path or float32 samples at 16 kHz) → `{"text", "language"}`, or a
    /// list of them → a list of dicts. `language` is the language read by a joint ASR + LID
    /// model, detected or given for Whisper, the chosen model's in a per-language folder, else None.
    #[pyo3(signature = (audio, *, beam = 1, language = None, task = "transcribe", languages = None, max_new_tokens = 440, lang = None, lid = None, batch = 8))]
    #[allow(clippy::too_many_arguments)]
    fn transcribe<'py>(
        &self,
        py: Python<'py>,
        audio: &Bound<'py, PyAny>,
        beam: usize,
        language: Option<String>,
        task: &str,
        languages: Option<Vec<String>>,
        max_new_tokens: usize,
        lang: Option<String>,
        lid: Option<PathBuf>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        use speechtune_models::whisper::tokenizer::Task;
        let task = match task {
            "transcribe" => Task::Transcribe,
            "translate" => Task::Translate,
            other => {
                return Err(PyValueError::new_err(format!("task={other:?}: expected \"transcribe\" or \"translate\"")));
            }
        };
        if beam == 0 {
            return Err(PyValueError::new_err("beam must be at least 1"));
        }
        let o = Options { beam, language, task, languages: languages.unwrap_or_default(), max_new_tokens, lang, lid };
        self.run(py, Mode::Transcribe, audio, &o, batch)
    }

    /// The language or class of one audio → `{"label", "probability"}`, or of a list of them.
    /// `languages`: Whisper only, choose among these.
    #[pyo3(signature = (audio, *, languages = None, batch = 8))]
    fn identify<'py>(
        &self,
        py: Python<'py>,
        audio: &Bound<'py, PyAny>,
        languages: Option<Vec<String>>,
        batch: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let o = Options { languages: languages.unwrap_or_default(), ..Options::default() };
        self.run(py, Mode::Identify, audio, &o, batch)
    }

    fn __repr__(&self) -> String {
        let dir = self.inner.lock().map(|i| i.dir().display().to_string()).unwrap_or_default();
        format!("Recognizer({dir:?})")
    }
}

/// A Python value as a TOML value, for `overrides`.
fn toml_value(key: &str, v: &Bound<'_, PyAny>) -> PyResult<toml::Value> {
    let bad = || {
        PyTypeError::new_err(format!(
            "overrides[{key:?}]: {} is not a configuration value (str, bool, int, float, path, list or dict)",
            type_name(v)
        ))
    };
    Ok(if v.is_instance_of::<PyBool>() {
        toml::Value::Boolean(v.extract()?)
    } else if v.is_instance_of::<PyInt>() {
        toml::Value::Integer(v.extract().map_err(|_| bad())?)
    } else if v.is_instance_of::<PyFloat>() {
        toml::Value::Float(v.extract()?)
    } else if let Ok(d) = v.cast::<PyDict>() {
        let mut t = toml::Table::new();
        for (k, item) in d.iter() {
            let k: String = k.extract().map_err(|_| bad())?;
            let item = toml_value(&format!("{key}.{k}"), &item)?;
            t.insert(k, item);
        }
        toml::Value::Table(t)
    } else if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        toml::Value::Array(v.try_iter()?.map(|item| toml_value(key, &item?)).collect::<PyResult<_>>()?)
    } else if let Ok(p) = v.extract::<PathBuf>() {
        toml::Value::String(p.to_string_lossy().into_owned())
    } else {
        return Err(bad());
    })
}

/// `--set key=value` assignments from `{"train.lr": 5e-4, ...}`.
fn assignments(overrides: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<String>> {
    let mut out = Vec::new();
    for (k, v) in overrides.into_iter().flat_map(|d| d.iter()) {
        let key: String = k.extract().map_err(|_| PyTypeError::new_err("overrides: keys must be str"))?;
        // A value's Display is its inline TOML (strings quoted, tables as `{ k = v }`), which
        // `--set key=value` parses back.
        out.push(format!("{key}={}", toml_value(&key, &v)?));
    }
    Ok(out)
}

/// Fine-tune (or, for a `seq2seq_asr` task, train Whisper) as `speechtune train CONFIG --set
/// k=v ...` does; returns the run summary (the report `train` prints) as a dict. `resume`
/// continues the run in its output_dir from its latest checkpoint. The progress bar is drawn on
/// stderr when it is a terminal.
#[pyfunction]
#[pyo3(signature = (config, overrides = None, *, resume = false, progress = true))]
fn train<'py>(
    py: Python<'py>,
    config: &Bound<'py, PyAny>,
    overrides: Option<&Bound<'py, PyDict>>,
    resume: bool,
    progress: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let config = path_of(config, "config")?;
    let overrides = assignments(overrides)?;
    let summary = py
        .detach(|| -> anyhow::Result<_> {
            let cfg = speechtune_train::RunConfig::load(&config, &overrides)?;
            if cfg.train.devices.len() > 1 {
                bail!(
                    "train.devices names {} devices: data-parallel training runs one process per device; use `speechtune train --devices ...`",
                    cfg.train.devices.len()
                );
            }
            let opts = speechtune_train::TrainOptions { progress, resume };
            speechtune_train::train(&cfg, &opts).with_context(|| format!("training {}", config.display()))
        })
        .map_err(py_err)?;
    to_python(py, &summary)
}

/// Score a run (its best checkpoint, else its latest) on a split of its corpus (or of `data`),
/// as `speechtune eval` does: returns the report as a dict (CER/WER, accuracy, macro-F1, per
/// language, confusion) with `dir`, `json` and `predictions`, the files written.
#[pyfunction]
#[pyo3(signature = (run, split = "test", *, data = None, beam = 1, device = "cpu", precision = "f32"))]
fn evaluate<'py>(
    py: Python<'py>,
    run: &Bound<'py, PyAny>,
    split: &str,
    data: Option<PathBuf>,
    beam: usize,
    device: &str,
    precision: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let precision = self::precision(precision)?;
    let run = path_of(run, "run")?;
    let split = speechtune_data::Split::ALL
        .into_iter()
        .find(|s| s.name() == split)
        .ok_or_else(|| PyValueError::new_err(format!("split={split:?}: expected \"train\", \"dev\" or \"test\"")))?;
    let dev = self::device(device)?;
    let e = py
        .detach(|| {
            speechtune_train::infer::evaluate(&run, split, data.as_deref(), beam.max(1), &dev, precision)
                .with_context(|| format!("evaluating {}", run.display()))
        })
        .map_err(py_err)?;
    let report = to_python(py, &e.report)?;
    let d = report.cast::<PyDict>()?;
    d.set_item("split", split.name())?;
    for (k, p) in [("dir", &e.dir), ("json", &e.json), ("predictions", &e.predictions)] {
        d.set_item(k, p.display().to_string())?;
    }
    Ok(report)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("SpeechtuneError", m.py().get_type::<SpeechtuneError>())?;
    m.add_class::<Upstream>()?;
    m.add_class::<Recognizer>()?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    Ok(())
}
