//! The demo web app's files, served by the dev IdP under `/app/` (`lookergate idp
//! --app-dir web/embed-demo`): the page then gets its users' tokens from the IdP's own
//! `POST /token`, same origin, and calls the gateway cross-origin (CORS). Static files
//! only: no directory listing, no dot files, nothing outside the directory (`..` and
//! symbolic links leading out are refused). Demo only.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Where the app's files are served from under the URL path.
pub const APP_PATH: &str = "/app/";

/// The directory served, resolved once (symbolic links followed) at start.
#[derive(Debug, Clone)]
pub struct AppDir {
    root: PathBuf,
}

impl AppDir {
    pub fn new(dir: &Path) -> Result<AppDir, String> {
        let root = std::fs::canonicalize(dir)
            .map_err(|e| format!("app directory {}: {e}", dir.display()))?;
        if !root.is_dir() {
            return Err(format!("app directory {}: not a directory", dir.display()));
        }
        Ok(AppDir { root })
    }

    /// The file `relative` (URL path under `/app/`, percent-decoded) names, if it is a
    /// regular file inside the directory.
    async fn file(&self, relative: &str) -> Option<PathBuf> {
        let mut path = self.root.clone();
        for segment in relative.split('/') {
            // No `..`, `.`, empty segments, hidden files (`.bin`, `.package-lock.json`),
            // or separators the URL parser did not see.
            if segment.is_empty() || segment.starts_with('.') || segment.contains(['\\', '\0']) {
                return None;
            }
            path.push(segment);
        }
        // A symbolic link inside may point anywhere: the resolved file must still be in.
        let resolved = tokio::fs::canonicalize(&path).await.ok()?;
        let metadata = tokio::fs::metadata(&resolved).await.ok()?;
        (resolved.starts_with(&self.root) && metadata.is_file()).then_some(resolved)
    }
}

/// `/app` (redirect), `/app/` (index.html) and `/app/{*path}`.
pub fn routes<S: Clone + Send + Sync + 'static>(dir: AppDir) -> Router<S> {
    Router::new()
        .route("/app", get(|| async { Redirect::permanent(APP_PATH) }))
        .route("/app/", get(index))
        .route("/app/{*path}", get(file))
        .with_state(dir)
}

async fn index(State(dir): State<AppDir>) -> Response {
    serve(&dir, "index.html").await
}

async fn file(State(dir): State<AppDir>, UrlPath(path): UrlPath<String>) -> Response {
    serve(&dir, &path).await
}

async fn serve(dir: &AppDir, relative: &str) -> Response {
    let Some(path) = dir.file(relative).await else {
        return not_found();
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, content_type(&path)),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                // A demo under development: always the file on disk.
                (header::CACHE_CONTROL, "no-store"),
            ],
            bytes,
        )
            .into_response(),
        Err(_) => not_found(),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The content type a browser needs (scripts and style sheets are refused under
/// `nosniff` without the right one).
pub fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs" | "cjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A fresh app directory: index.html, js/app.js, a hidden file, a sub-directory, and
    /// a secret next to (outside) it with a symbolic link to it from inside.
    fn fixture() -> (PathBuf, AppDir) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let base = std::env::temp_dir().join(format!(
            "lookergate-app-files-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let app = base.join("app");
        std::fs::create_dir_all(app.join("js/sub")).unwrap();
        std::fs::write(app.join("index.html"), "<h1>demo</h1>").unwrap();
        std::fs::write(app.join("js/app.js"), "console.log(1)").unwrap();
        std::fs::write(app.join("style.css"), "body{}").unwrap();
        std::fs::write(app.join(".env"), "hidden").unwrap();
        std::fs::write(base.join("secret.txt"), "SECRET").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(base.join("secret.txt"), app.join("link.txt")).unwrap();
        let dir = AppDir::new(&app).unwrap();
        (base, dir)
    }

    async fn get(dir: &AppDir, uri: &str) -> (StatusCode, Option<String>, String) {
        let response = routes::<()>(dir.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        (status, content_type.or(location), body)
    }

    #[tokio::test]
    async fn files_are_served_with_their_content_types() {
        let (base, dir) = fixture();
        for (uri, content_type, body) in [
            ("/app/", "text/html; charset=utf-8", "<h1>demo</h1>"),
            (
                "/app/index.html",
                "text/html; charset=utf-8",
                "<h1>demo</h1>",
            ),
            (
                "/app/js/app.js",
                "text/javascript; charset=utf-8",
                "console.log(1)",
            ),
            ("/app/style.css", "text/css; charset=utf-8", "body{}"),
        ] {
            let (status, got_type, got_body) = get(&dir, uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}");
            assert_eq!(got_type.as_deref(), Some(content_type), "{uri}");
            assert_eq!(got_body, body, "{uri}");
        }
        let (status, location, _) = get(&dir, "/app").await;
        assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(location.as_deref(), Some("/app/"));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[tokio::test]
    async fn nothing_outside_hidden_or_listed_is_served() {
        let (base, dir) = fixture();
        for uri in [
            "/app/js",
            "/app/js/",
            "/app/js/sub",
            "/app/../secret.txt",
            "/app/%2e%2e/secret.txt",
            "/app/js/%2e%2e/%2e%2e/secret.txt",
            "/app/js/..%2f..%2fsecret.txt",
            "/app/%2e%2e%5csecret.txt",
            "/app/js//app.js",
            "/app/./index.html",
            "/app/.env",
            "/app/link.txt",
            "/app/missing.js",
            "/app/%00",
        ] {
            let (status, _, body) = get(&dir, uri).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
            assert!(
                !body.contains("SECRET") && !body.contains("hidden"),
                "{uri}: {body}"
            );
        }
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = AppDir::new(Path::new("/nonexistent/lookergate-app")).unwrap_err();
        assert!(err.contains("/nonexistent/lookergate-app"), "{err}");
    }
}
