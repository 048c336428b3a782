# What Redis keeps: the function library's ids and history bounds, checked in Redis itself, and
# what a node makes of them. Ids Redis gives (events other services publish) end in node bits
# 1023 and rise above every id the channel already has, even when several are given in the same
# microsecond; a channel's history is bounded by the publishing location's sse_history, and the
# newest id it no longer holds travels with it, so a client that resumes before it on a node
# that never had the channel gets the reset event (reason "evicted") and then exactly what Redis
# holds.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Math::BigInt;
use JSON::PP;
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames reset_frame);

my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
            sse_history 5;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $redis = SSERedis->new;
my @nodes = $redis->nodes(2, server => $locations);
my ($A, $B) = @nodes;
END { local $?; $_->stop for grep { defined } @nodes; $redis->stop if $redis }
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;

my $PRE = ":ok\n\n";

# --- ids Redis gives ---------------------------------------------------------------------------
# A node's event first, then a burst from "another service" in one pipeline (same microsecond).
my $node_ev = $A->publish_event('/pub?topic=ids', 'from a node');
my $pipeline = join '', map { "FCALL sse_publish 1 sse:ids burst-$_\n" } 1 .. 20;
my $out = `printf '%s' '$pipeline' | redis-cli -p ${\ $redis->port} 2>&1`;
my @ids = split /\n/, $out;
is(scalar @ids, 20, '20 ids from a pipelined burst of FCALL sse_publish') or diag($out);
my $prev = Math::BigInt->new($node_ev->[0]);
my $ok = 1;
for my $id (@ids) {
    my $n = Math::BigInt->new($id);
    $ok &&= $id =~ /^[1-9][0-9]{18}$/ && $n->copy->bmod(1024) == 1023 && $n > $prev;
    $prev = $n;
}
ok($ok, 'each is 19 digits, ends in node bits 1023 and is above the one before (the first above the node\'s)')
    or diag(join ' ', $node_ev->[0], @ids);

# The list keeps the last 5 of them (the publishing location's sse_history 5 applied by the node;
# the function's default is 100, so pass 5 for the burst as a service would).
$redis->cli('DEL', 'sse:ids');
my @kept;
push @kept, $redis->cli('FCALL', 'sse_publish', 1, 'sse:ids', "k$_", '', 5) for 1 .. 8;
is($redis->cli('LLEN', 'sse:ids'), 5, 'history bounded: LLEN 5 after 8 publishes with history 5');
my @entries = map { decode_json($_) } split /\n/, $redis->cli('LRANGE', 'sse:ids', 0, -1);
is_deeply([map { $_->{i} } @entries], [@kept[3 .. 7]], 'the newest 5, oldest first');
is($entries[-1]{l}, $kept[2], 'the newest entry records the newest id no longer held');
is_deeply([map { $_->{d} } @entries], [map { "k$_" } 4 .. 8], 'data kept as published');

my $err = $redis->cli('FCALL', 'sse_publish', 1, 'sse:ids', 'x', "bad\nname");
like($err, qr/event name/, 'an event name with a line break is refused by the function');

# --- history from Redis on a node that never had the channel -----------------------------------
# 8 events on A with sse_history 5: Redis keeps the last 5; B has never seen the channel.
my @ev = map { $A->publish_event('/pub?topic=hist', "h$_") } 1 .. 8;
is($redis->cli('LLEN', 'sse:hist'), 5, 'Redis keeps 5 of the 8');

# Resuming after the 5th: B replays 6-8 from Redis, exactly.
my $s1 = $B->resume('/events?topics=hist', $ev[4][0]);
$s1->wait_body(length($PRE . frames(@ev[5 .. 7])), 10);
$s1->drain(0.3);
is($s1->body, $PRE . frames(@ev[5 .. 7]), 'B (never had the channel) resumes after event 5: exactly 6-8 from Redis');

# Resuming after the 1st: 2 and 3 are gone from Redis too, so the reset comes first, then 4-8.
my $s2 = $B->resume('/events?topics=hist', $ev[0][0]);
my $want2 = $PRE . reset_frame($ev[0][0], 'evicted') . frames(@ev[3 .. 7]);
$s2->wait_body(length $want2, 10);
$s2->drain(0.3);
is($s2->body, $want2, 'resuming after event 1 on B: reset (evicted), then the 5 Redis holds');

# Live after the replay, on both.
my $live = $A->publish_event('/pub?topic=hist', 'live');
for my $s ($s1, $s2) {
    $s->wait_body(length($s->body) + length($live->[1]), 10);
}
like($s1->body, qr/\Q$live->[1]\E\z/, 'then live events (first stream)');
like($s2->body, qr/\Q$live->[1]\E\z/, 'then live events (second stream)');
$_->close for $s1, $s2;

# --- an event sent again ----------------------------------------------------------------------
# A node sends again, flagged "resent", what a broken connection may have applied: the function
# adds and publishes it only if the channel's history does not hold its id yet.
my @again = ('FCALL', 'sse_publish', 1, 'sse:again', 'twice?', '', 100, 0, '1838870250923657666', 'feedfacefeedface');
is($redis->cli(@again), '1838870250923657666', 'a node\'s event: the function answers its id');
is($redis->cli(@again, 1), '1838870250923657666', 'sent again (resent): the same id');
is($redis->cli('LLEN', 'sse:again'), 1, 'resent: the history holds it once');
is($redis->cli(@again), '1838870250923657666', 'not flagged: taken as a new event');
is($redis->cli('LLEN', 'sse:again'), 2, 'so only the flag makes the function look (2 entries now)');
my @other = ('FCALL', 'sse_publish', 1, 'sse:again', 'new', '', 100, 0, '1838870250923657999', 'feedfacefeedface', 1);
$redis->cli(@other);
is($redis->cli('LLEN', 'sse:again'), 3, 'resent with an id the history lacks: added');

$_->finish for @nodes;
done_testing;
