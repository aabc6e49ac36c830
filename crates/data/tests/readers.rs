//! Every corpus layout, read from small fixtures built here from the demo corpus' audio, plus
//! the demo corpus itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use speechtune_data::corpus::Layout;
use speechtune_data::readers::{commonvoice, manifest, mlsuperb, shards};
use speechtune_data::{AudioSource, BatchPlan, Loader, LoaderOptions, Problems, Split, plan_batches};

fn repo() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("../..")
}

fn demo() -> PathBuf {
    repo().join("data/demo")
}

fn wav() -> PathBuf {
    repo().join("tests/fixtures/audio/mono16k.wav")
}

fn strict() -> Problems {
    Problems::new(false)
}

#[test]
fn demo_corpus_reads_as_ml_superb() {
    let layout = Layout::detect(&demo()).unwrap();
    assert_eq!(layout, Layout::MlSuperb(demo()));
    let count = |split, lang: &str| {
        mlsuperb::read(&demo(), "10min", split, &mut strict())
            .unwrap()
            .iter()
            .filter(|u| u.lang.as_deref() == Some(lang))
            .count()
    };
    for lang in ["ces", "deu", "ita", "pol", "spa"] {
        assert_eq!(
            (count(Split::Train, lang), count(Split::Dev, lang), count(Split::Test, lang)),
            (42, 9, 9),
            "{lang}"
        );
    }
    // English adds festival (14/3/3) and the 12 real recordings (test only).
    assert_eq!((count(Split::Train, "eng"), count(Split::Dev, "eng"), count(Split::Test, "eng")), (56, 12, 24));
    let test = mlsuperb::read(&demo(), "10min", Split::Test, &mut strict()).unwrap();
    let real = test.iter().find(|u| u.id == "pocketsphinx_goforward").unwrap();
    assert_eq!(real.text.as_deref(), Some("go forward ten meters"));
    assert!(
        matches!(&real.audio, AudioSource::File(p) if p.ends_with("pocketsphinx/eng/wav/pocketsphinx_goforward.flac"))
    );
    let e = mlsuperb::read(&demo(), "1h", Split::Train, &mut strict()).unwrap_err().to_string();
    assert!(e.contains("transcript_1h_train.txt"), "{e}");
}

fn ml_superb_tree(dir: &Path, transcript: &[u8]) -> PathBuf {
    let lang = dir.join("mini/xyz");
    std::fs::create_dir_all(lang.join("wav")).unwrap();
    std::fs::copy(wav(), lang.join("wav/a.wav")).unwrap();
    std::fs::copy(wav(), lang.join("wav/b.wav")).unwrap();
    std::fs::write(lang.join("transcript_10min_train.txt"), transcript).unwrap();
    lang.join("transcript_10min_train.txt")
}

#[test]
fn ml_superb_bad_lines_name_file_and_line_or_are_all_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let file =
        ml_superb_tree(tmp.path(), b"a a Hello there\n\nb b\nc c Missing audio\nb b Bad \xff byte\nb b Fine, too.\n");
    let e = mlsuperb::read(tmp.path(), "10min", Split::Train, &mut strict()).unwrap_err().to_string();
    assert_eq!(e, format!("{}:2: empty line", file.display()));
    let mut skip = Problems::new(true);
    let utts = mlsuperb::read(tmp.path(), "10min", Split::Train, &mut skip).unwrap();
    assert_eq!(utts.iter().map(|u| u.text.clone().unwrap()).collect::<Vec<_>>(), ["Hello there", "Fine, too."]);
    let lines: Vec<(usize, &str)> = skip.found.iter().map(|p| (p.line, p.reason.as_str())).collect();
    assert_eq!(
        lines,
        [
            (2, "empty line"),
            (3, "expected `ID FIELD TRANSCRIPT`: empty transcript"),
            (4, "audio wav/c.wav not found"),
            (5, "invalid UTF-8 at byte 8"),
        ]
    );
}

#[test]
fn common_voice_release_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cv-corpus/de");
    std::fs::create_dir_all(root.join("clips")).unwrap();
    std::fs::copy(wav(), root.join("clips/common_voice_de_1.mp3.wav")).unwrap();
    std::fs::copy(wav(), root.join("clips/common_voice_de_2.wav")).unwrap();
    let header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale\tsegment\n";
    let rows = "x\tcommon_voice_de_1.mp3.wav\tGuten Tag.\t2\t0\t\t\t\tde\t\nx\tcommon_voice_de_2.wav\tNoch einer.\t2\t0\t\t\t\t\t\n";
    std::fs::write(root.join("train.tsv"), format!("{header}{rows}")).unwrap();
    std::fs::write(root.join("dev.tsv"), format!("{header}x\tcommon_voice_de_2.wav\tzu wenige Spalten\n")).unwrap();
    assert_eq!(Layout::detect(&root).unwrap(), Layout::CommonVoice(root.clone()));
    let train = commonvoice::read(&root, "train", &mut strict()).unwrap();
    assert_eq!(train.len(), 2);
    assert_eq!((train[0].id.as_str(), train[0].lang.as_deref()), ("common_voice_de_1.mp3", Some("de")));
    // No locale in the row: the folder name is the language.
    assert_eq!((train[1].text.as_deref(), train[1].lang.as_deref()), (Some("Noch einer."), Some("de")));
    let e = commonvoice::read(&root, "dev", &mut strict()).unwrap_err().to_string();
    assert!(e.ends_with("dev.tsv:2: expected 10 tab-separated columns, found 3"), "{e}");
}

#[test]
fn manifests_tsv_and_jsonl_with_segments_and_splits() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(wav(), tmp.path().join("long.wav")).unwrap();
    let tsv = tmp.path().join("m.tsv");
    std::fs::write(&tsv, "path\ttext\tlang\tlabel\tstart\tend\tsplit\nlong.wav\thi\ten\thappy\t0.01\t0.05\ttrain\nlong.wav\tho\ten\tsad\t\t\ttest\n").unwrap();
    assert_eq!(Layout::detect(&tsv).unwrap(), Layout::Manifest(tsv.clone()));
    let train = manifest::read(&tsv, Some(Split::Train), &mut strict()).unwrap();
    assert_eq!(train.len(), 1);
    assert_eq!(
        (train[0].id.as_str(), train[0].label.as_deref(), train[0].seconds()),
        ("long_0000010", Some("happy"), Some(0.04))
    );
    let wave = speechtune_data::load_audio(&train[0]).unwrap();
    assert_eq!(wave.len(), 640); // 0.04 s at 16 kHz
    let jsonl = tmp.path().join("m.jsonl");
    std::fs::write(
        &jsonl,
        "{\"path\": \"long.wav\", \"label\": \"yes\", \"duration\": 0.1}\n{\"path\": \"long.wav\", \"start\": \"x\"}\n",
    )
    .unwrap();
    let e = manifest::read(&jsonl, None, &mut strict()).unwrap_err().to_string();
    assert!(e.ends_with("m.jsonl:2: \"x\" is not a number"), "{e}");
    let mut skip = Problems::new(true);
    let items = manifest::read(&jsonl, None, &mut skip).unwrap();
    assert_eq!((items.len(), items[0].duration, skip.found.len()), (1, Some(0.1), 1));
}

#[test]
fn tar_shards_are_read_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let demo_files = ["espeak/deu/wav/espeak_deu_01_v0.ogg", "pocketsphinx/eng/wav/pocketsphinx_cards_001.flac"];
    let mut builder = tar::Builder::new(std::fs::File::create(tmp.path().join("shard-000000.tar")).unwrap());
    for (i, f) in demo_files.iter().enumerate() {
        builder.append_path_with_name(demo().join(f), format!("seg{i}.{}", f.rsplit('.').next().unwrap())).unwrap();
    }
    builder.finish().unwrap();
    std::fs::write(
        tmp.path().join("shards.tsv"),
        "shard\tmember\tsource\tstart\tend\tduration\tlang\nshard-000000.tar\tseg0.ogg\ta.ogg\t0\t1.8\t1.8\tdeu\nshard-000000.tar\tseg1.flac\tb.flac\t3\t4.1\t1.1\teng\n",
    )
    .unwrap();
    let layout = Layout::detect(tmp.path()).unwrap();
    assert_eq!(layout, Layout::Shards(tmp.path().join("shards.tsv")));
    let items = shards::read(&tmp.path().join("shards.tsv"), &mut strict()).unwrap();
    assert_eq!(items.len(), 2);
    for (u, f) in items.iter().zip(demo_files) {
        let from_tar = speechtune_data::load_audio(u).unwrap();
        let direct = speechtune_audio::load_mono_16k(&demo().join(f)).unwrap();
        assert_eq!(from_tar, direct, "{f}");
    }
    std::fs::write(
        tmp.path().join("shards.tsv"),
        "shard\tmember\tsource\tstart\tend\tduration\nshard-000000.tar\tnope.wav\tx\t0\t1\t1\n",
    )
    .unwrap();
    let e = shards::read(&tmp.path().join("shards.tsv"), &mut strict()).unwrap_err().to_string();
    assert!(e.ends_with("shards.tsv:2: member nope.wav not in shard-000000.tar"), "{e}");
}

#[test]
fn loader_decodes_batches_in_plan_order_on_worker_threads() {
    let mut utts = mlsuperb::read(&demo(), "10min", Split::Dev, &mut strict()).unwrap();
    assert!(speechtune_data::corpus::fill_durations(&mut utts, 2).is_empty());
    let durations: Vec<f64> = utts.iter().map(|u| u.seconds().unwrap()).collect();
    let plan = plan_batches(&durations, &BatchPlan { max_seconds: 12.0, ..BatchPlan::default() });
    let utts = Arc::new(utts);
    let opts = LoaderOptions { workers: 3, prefetch: 2, cache: true };
    let cache = Loader::cache_handle();
    let mut seen = Vec::new();
    for (batch, want) in Loader::with_cache(utts.clone(), plan.clone(), &opts, cache.clone()).zip(&plan) {
        let batch = batch.unwrap();
        assert_eq!(&batch.indices, want);
        for (w, &i) in batch.waves.iter().zip(&batch.indices) {
            let expected = durations[i] * 16000.0;
            assert!((w.len() as f64 - expected).abs() <= 1.0, "{}: {} vs {expected}", utts[i].id, w.len());
        }
        let (data, mask, max) = batch.padded();
        assert_eq!(
            (data.len(), mask.iter().filter(|m| **m).count()),
            (batch.len() * max, batch.lengths().iter().sum())
        );
        seen.extend(batch.indices);
    }
    seen.sort();
    assert_eq!(seen, (0..utts.len()).collect::<Vec<_>>());
    assert_eq!(cache.lock().unwrap().len(), utts.len(), "every item cached");
    // Dropping a loader early stops its workers.
    let mut early = Loader::new(utts, plan, &opts);
    assert!(early.next().unwrap().is_ok());
    drop(early);
}
