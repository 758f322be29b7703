//! [`Tls`]: a CA and certificates made for a test by `openssl`, in a
//! temporary directory removed when dropped: for the TLS Redis server and
//! for TLS upstreams.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A TLS server's certificates, in a temporary directory of their own.
#[derive(Debug)]
pub struct Tls {
    /// The directory: `ca.pem`, `server.pem`, `server.key` (and `client.*`).
    pub dir: PathBuf,
    /// The CA's certificate, PEM.
    pub ca_pem: Vec<u8>,
    /// Mutual TLS: the client's certificate and key, which the server requires.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Runs `openssl` in `dir` with `args` (split on whitespace); panics with
/// its output when it fails.
fn openssl(dir: &Path, args: &str) {
    let output = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `openssl req` arguments for a new, unencrypted P-256 key.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

/// `name.key` and `name.pem`, a certificate for `subject` signed by the CA in
/// `dir`, with the `extensions` (the lines of an `openssl x509 -extfile`).
fn signed_certificate(dir: &Path, name: &str, subject: &str, extensions: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("write the extensions");
    openssl(
        dir,
        &format!("req {NEW_KEY} -keyout {name}.key -out {name}.csr -subj {subject}"),
    );
    let serial = fastrand::u32(1..);
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -set_serial {serial} -days 1 \
             -out {name}.pem -extfile {name}.ext"
        ),
    );
}

impl Tls {
    /// A CA and a server certificate for `127.0.0.1` and `localhost`; with
    /// `mutual`, a client certificate too.
    pub fn generate(mutual: bool) -> Tls {
        let dir = std::env::temp_dir().join(format!(
            "kneo-tls-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory for certificates");
        openssl(
            &dir,
            &format!(
                "req -x509 {NEW_KEY} -keyout ca.key -out ca.pem -days 1 -subj /CN=kneo-test-CA \
                 -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ),
        );
        signed_certificate(
            &dir,
            "server",
            "/CN=localhost",
            "basicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
        let client = mutual.then(|| {
            signed_certificate(
                &dir,
                "client",
                "/CN=kneo-test-client",
                "basicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=clientAuth\n",
            );
            let read = |name: &str| std::fs::read(dir.join(name)).expect("the client's PEM");
            (read("client.pem"), read("client.key"))
        });
        let ca_pem = std::fs::read(dir.join("ca.pem")).expect("the CA's PEM");
        Tls {
            dir,
            ca_pem,
            client,
        }
    }
}

impl Tls {
    /// [`generate`](Self::generate) without mutual TLS, or `None` (with a
    /// printed reason) when `openssl` is not installed; a panic under
    /// `CI=true`, where it must be.
    pub fn generate_if_openssl() -> Option<Tls> {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("openssl").is_file())
        });
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "openssl not on PATH, and CI=true: the TLS tests must run in CI"
            );
            println!("skipped: openssl not on PATH");
            return None;
        }
        Some(Tls::generate(false))
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
