//! The HTTP face: repository delivery (apt), and later the API and the browser pages.

use std::path::PathBuf;
use warp::Filter;

/// All routes of the daemon.
pub fn routes(state: PathBuf) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let repositories = warp::path("repositories").and(warp::fs::dir(state.join("repositories")));
    let log = warp::log::custom(|info| {
        tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "http");
    });
    repositories.with(log)
}

/// Serve until `shutdown` resolves, then let in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: PathBuf,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    warp::serve(routes(state)).incoming(listener).graceful(shutdown).run().await;
}
