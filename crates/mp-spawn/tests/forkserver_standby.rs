//! A forkserver's standby children, killed from outside, are passed over. A binary of its
//! own: it kills the server's children, which tests running beside it could be using.

mod common;

use common::{children_of, forkservers, kill_and_wait, start_plus_one as start};

#[test]
fn standby_children_killed_from_outside_are_passed_over() {
    assert_eq!(start(10), Some(11));
    let server = forkservers()[0];
    let standbys = children_of(server);
    assert!(!standbys.is_empty(), "the server keeps standby children");
    for pid in standbys {
        kill_and_wait(pid);
    }
    assert_eq!(start(20), Some(21));
    assert_eq!(forkservers(), [server], "the same server carries on");
}
