//! The README is a test: every ```` ```sh ```` block in it runs here, against the built
//! binary, and the output it documents is checked. An example that stops matching the
//! code fails the build.
//!
//! Rules (the README's "Examples are tests" section says the same to its readers):
//! - Blocks run in order, in one scratch directory holding a copy of the repository's
//!   `data/`, with `vitalwatch` the binary under test. State carries over from block to
//!   block (a replay feeds the queries after it), and shell variables within a block.
//! - `<!-- readme-test: skip REASON -->` on the line before a block: not run (set-up
//!   commands, release builds, commands that run until Ctrl-C); the reason is required.
//! - `<!-- readme-test: server -->`: the block runs while `vitalwatch run --no-simulator`
//!   serves from the scratch directory; `127.0.0.1:8080` in the block means its port.
//! - A command ending in `\` continues on the next line; one with a here-document
//!   (`<<'EOF'`) runs to its delimiter line.
//! - Comment lines directly after a command (no blank line between) are its documented
//!   output: each must appear in what the command printed (stdout and stderr), in order,
//!   `…` standing for any text (timings, ids, counts that vary). A command whose
//!   documented output starts with `error:` must exit with status 1; every other command
//!   must exit 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::free_port;

/// One runnable command of a block, with the output the README documents for it.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    expected: Vec<String>,
}

#[derive(Debug)]
struct Block {
    line: usize,
    server: bool,
    examples: Vec<Example>,
}

fn parse(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let directive = i
            .checked_sub(1)
            .and_then(|p| lines[p].trim().strip_prefix("<!-- readme-test:"))
            .map(|d| d.trim_end_matches("-->").trim().to_owned());
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end].trim() != "```" {
            end += 1;
        }
        let body = &lines[start..end];
        i = end + 1;
        match directive.as_deref() {
            Some(d) if d.starts_with("skip") => {
                assert!(
                    d.len() > "skip ".len() + 5,
                    "README line {start}: a skipped block needs a reason"
                );
                continue;
            }
            Some("server") | None => {}
            Some(other) => panic!("README line {start}: unknown directive {other:?}"),
        }
        let mut examples: Vec<Example> = Vec::new();
        let mut k = 0;
        while k < body.len() {
            let l = body[k].trim();
            if l.is_empty() || l.starts_with('#') {
                k += 1;
                continue;
            }
            let first = start + k + 1;
            let mut command = body[k].to_owned();
            while command.trim_end().ends_with('\\') && k + 1 < body.len() {
                k += 1;
                command.push('\n');
                command.push_str(body[k]);
            }
            // A here-document runs to its delimiter line.
            if let Some((_, word)) = command.split_once("<<") {
                let word = word.trim().trim_matches(['\'', '"']).to_owned();
                while k + 1 < body.len() {
                    k += 1;
                    command.push('\n');
                    command.push_str(body[k]);
                    if body[k].trim() == word {
                        break;
                    }
                }
            }
            k += 1;
            let mut expected = Vec::new();
            while k < body.len() && body[k].trim_start().starts_with('#') {
                expected.push(body[k].trim_start()[1..].trim().to_owned());
                k += 1;
            }
            examples.push(Example {
                line: first,
                command,
                expected,
            });
        }
        blocks.push(Block {
            line: start,
            server: directive.as_deref() == Some("server"),
            examples,
        });
    }
    blocks
}

/// Whether `pattern` (with `…` for any text) occurs in `text` from `from`; returns where
/// the match ends.
fn find(text: &str, pattern: &str, from: usize) -> Option<usize> {
    let parts: Vec<&str> = pattern.split('…').collect();
    let mut start = from;
    loop {
        let first = text[start..].find(parts[0])? + start;
        let mut cur = first + parts[0].len();
        let mut ok = true;
        for p in &parts[1..] {
            match text[cur..].find(p) {
                Some(at) => cur += at + p.len(),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return Some(cur);
        }
        start = first + parts[0].len().max(1);
        if start > text.len() {
            return None;
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `vitalwatch run --no-simulator` in `dir`, until dropped.
struct Server(std::process::Child);

impl Server {
    fn start(bin: &Path, dir: &Path, port: u16) -> Server {
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--no-simulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .current_dir(dir);
        Server(common::serve(cmd, port))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_block(bin: &Path, dir: &Path, block: &Block, port: u16) -> Vec<String> {
    let mut script = format!("set +e\nvitalwatch() {{ \"{}\" \"$@\"; }}\n", bin.display());
    for (i, ex) in block.examples.iter().enumerate() {
        let cmd = ex
            .command
            .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        script.push_str(&format!(
            "{{\n{cmd}\n}} > .readme-out-{i} 2>&1 < /dev/null\necho $? > .readme-rc-{i}\n"
        ));
    }
    let status = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env_remove("VITALWATCH_DATA")
        .env_remove("VITALWATCH_CONFIG")
        .env("NO_COLOR", "1")
        .status()
        .unwrap();
    assert!(status.success(), "README block at line {}", block.line);
    let mut failures = Vec::new();
    for (i, ex) in block.examples.iter().enumerate() {
        let out = std::fs::read_to_string(dir.join(format!(".readme-out-{i}"))).unwrap();
        let rc: i32 = std::fs::read_to_string(dir.join(format!(".readme-rc-{i}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let want_rc = if ex.expected.first().is_some_and(|e| e.starts_with("error:")) {
            1
        } else {
            0
        };
        let mut problem = None;
        if rc != want_rc {
            problem = Some(format!("exit status {rc}, the README implies {want_rc}"));
        }
        let mut at = 0;
        for e in &ex.expected {
            match find(&out, e, at) {
                Some(end) => at = end,
                None => {
                    problem = Some(format!("documented output not found: {e:?}"));
                    break;
                }
            }
        }
        if let Some(p) = problem {
            failures.push(format!(
                "README line {}: `{}`: {p}\n--- output ---\n{out}",
                ex.line, ex.command
            ));
        }
    }
    failures
}

#[test]
fn every_readme_example_works_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = parse(&readme);
    assert!(
        blocks.iter().map(|b| b.examples.len()).sum::<usize>() > 20,
        "the README's examples were not found"
    );
    let scratch = tempfile::tempdir().unwrap();
    let dir: PathBuf = scratch.path().to_path_buf();
    copy_dir(&root.join("data"), &dir.join("data"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_vitalwatch"));
    let mut failures = Vec::new();
    for block in &blocks {
        let port = free_port();
        let _server = block.server.then(|| Server::start(&bin, &dir, port));
        failures.extend(run_block(&bin, &dir, block, port));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_matcher_reads_placeholders() {
    assert_eq!(
        find("readings: 12 in 0.5s", "readings: … in …s", 0),
        Some(20)
    );
    assert_eq!(find("abc", "b…d", 0), None);
    assert_eq!(find("x=1 y=2 x=3 z", "x=…z", 0), Some(13));
}
