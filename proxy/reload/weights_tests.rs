//! Run-time weights (the rollout controller's): applied only when they fit the split, published
//! in a snapshot of the same generation, and dropped again on request.

use super::*;

const CONFIG: &str = "listeners: [{ bind: \"127.0.0.1:0\" }]\nupstreams:\n  a: { backends: [\"127.0.0.1:1\"] }\n  b: { backends: [\"127.0.0.1:2\"] }\nroutes:\n  - { name: r, split: [{ upstream: a, weight: 9 }, { upstream: b, weight: 1 }] }\n";

#[tokio::test]
async fn run_time_weights_must_fit_the_split() {
    let (mut r, _handle) = Reloader::load(ConfigSource::Text(CONFIG.into()), 1).unwrap();
    let live = |r: &Reloader| {
        r.shared()
            .snapshot()
            .route("r")
            .unwrap()
            .split
            .weights()
            .to_vec()
    };
    assert!(!r.set_weights("r".into(), Some(vec![1])), "wrong length");
    assert!(
        !r.set_weights("r".into(), Some(vec![0, 0])),
        "nothing could be sent"
    );
    assert!(
        !r.set_weights("nope".into(), Some(vec![1, 1])),
        "no such route"
    );
    assert_eq!(live(&r), [9, 1]);
    assert!(r.set_weights("r".into(), Some(vec![0, 100])));
    assert_eq!(live(&r), [0, 100]);
    assert_eq!(
        r.shared().snapshot().generation,
        1,
        "the config did not change"
    );
    assert!(r.set_weights("r".into(), None));
    assert_eq!(live(&r), [9, 1]);
}
