# Prefix patterns: a stream on `blog.*` takes the events of every channel starting with "blog.",
# one on `*` every channel's, each event once however many of its channels and patterns the
# stream covers; only where sse_subscribe_patterns allows them, and within sse_subscribe_allow.
# With Redis, a node listens to the pattern there (PSUBSCRIBE) and takes other nodes' events once.
# The config is docs/subscribing.md's, verbatim.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use SSETest;
use SSERedis;
use SSEExpect qw(frames);

# From docs/subscribing.md ("Prefix patterns").
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_subscribe_patterns on;
            sse_heartbeat off;
        }
        location = /public-events {
            sse_subscribe $arg_topics;
            sse_subscribe_patterns on;
            sse_subscribe_allow "public.*";
            sse_heartbeat off;
        }
        location = /strict {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $t = SSETest->new(spread => 1, server => $locations)->start;
END { local $?; $t->stop if $t }
my $PRE = ":ok\n\n";

sub settle {
    my ($want) = @_;    # [stream, expected body] ...
    for my $w (@$want) {
        $w->[0]->wait_body(length $w->[1], 5);
    }
    $_->[0]->drain(0.2) for @$want;
}

my ($blog, $all, $both, $news) =
    $t->subscribe_spread('/events?topics=blog.*', '/events?topics=*', '/events?topics=blog.posts,blog.*', '/events?topics=news');

my $e1 = $t->publish_event('/pub?topic=blog.posts', 'post');
my $e2 = $t->publish_event('/pub?topic=news', 'headline');
my $e3 = $t->publish_event('/pub?topic=blog.a,blog.b', 'to two blog channels');
my $e4 = $t->publish_event('/pub?topic=blogs.x', 'not under blog.');
# subscribers sums per channel: the stream on blog.posts and blog.* counts for both.
is($e1->[2]{subscribers}, 4, 'blog.posts: subscribers 4 (blog.*, *, and blog.posts+blog.* twice)');
my @want = ([$blog, $PRE . frames($e1, $e3)], [$all, $PRE . frames($e1, $e2, $e3, $e4)],
            [$both, $PRE . frames($e1, $e3)], [$news, $PRE . frames($e2)]);
settle(\@want);
is($blog->body, $want[0][1], 'blog.*: the blog. events, each once');
is($all->body, $want[1][1], '*: every event, each once');
is($both->body, $want[2][1], 'blog.posts and blog.*: each event once');
is($news->body, $want[3][1], 'news: its own');

# Where patterns are not allowed, and outside sse_subscribe_allow.
my $r = $t->request('GET', '/strict?topics=blog.*');
is($r->{status}, 400, 'a pattern where sse_subscribe_patterns is off: 400');
like($r->{body}, qr/channel patterns such as "blog\.\*" are not allowed here/, 'with the reason');
is($t->request('GET', '/public-events?topics=*')->{status}, 403, '* outside sse_subscribe_allow "public.*": 403');
is($t->request('GET', '/public-events?topics=p*')->{status}, 403, 'p* (wider than public.*): 403');
my $pub = $t->subscribe('/public-events?topics=public.*');
my $e5 = $t->publish_event('/pub?topic=public.weather', 'sunny');
$pub->wait_body(length($PRE . $e5->[1]), 5);
is($pub->body, $PRE . $e5->[1], 'public.* within the allowance works');

# Stats count the pattern as a channel with its streams.
my $st = $t->get_json('/stats?channels=blog.*');
is($st->{per_channel}[0]{subscribers}, 2, 'the pattern blog.* has 2 streams');
$_->close for $blog, $all, $both, $news, $pub;
$t->finish;

# --- across nodes ---------------------------------------------------------------------------
my $redis = SSERedis->new;
my @nodes = $redis->nodes(2, server => $locations);
my ($A, $B) = @nodes;
END { local $?; $_->stop for grep { defined } @nodes; $redis->stop if $redis }
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;
my $bp = $B->subscribe('/events?topics=blog.*');
my $bb = $B->subscribe('/events?topics=blog.posts,blog.*');
is(SSERedis::wait_value(sub { $redis->cli('PUBSUB', 'NUMPAT') }, 1, 5), 1, 'B listens to one pattern in Redis (PUBSUB NUMPAT 1)');
ok($redis->wait_numsub('sse:blog.posts', 1), 'and to blog.posts');
my $x1 = $A->publish_event('/pub?topic=blog.posts', 'from A');
my $x2 = $A->publish_event('/pub?topic=blog.drafts', 'draft from A');
my $x3 = $A->publish_event('/pub?topic=news', 'not blog');
settle([[$bp, $PRE . frames($x1, $x2)], [$bb, $PRE . frames($x1, $x2)]]);
is($bp->body, $PRE . frames($x1, $x2), 'B on blog.*: the blog. events published on A, once each');
is($bb->body, $PRE . frames($x1, $x2), 'B on blog.posts and blog.*: once each, though Redis sends blog.posts twice');
$_->close for $bp, $bb;
is(SSERedis::wait_value(sub { $redis->cli('PUBSUB', 'NUMPAT') }, 0, 5), 0, 'B stops listening to the pattern when its streams leave');
$_->finish for @nodes;
done_testing;
