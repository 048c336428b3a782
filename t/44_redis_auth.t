# Redis with a password (requirepass) and an ACL user: nodes that give the right credentials in
# their sse_redis URL (redis://:password@..., redis://user:password@...) fan out to each other;
# a node with a wrong password logs one clear [error] line with Redis's own message (once, not once
# per retry, while it keeps retrying) and goes on serving its local streams and publishes. A node
# whose ACL user is disabled and its connections killed catches up from Redis's history when the
# user is enabled again.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(sleep time);
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames);

my $locations = <<'CONF';
        location = /events {
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

my $redis = SSERedis->new(password => 'admin-pw-7', users => [[alice => 'alice-pw-9']]);
my $port = $redis->port;
my @nodes;
END { local $?; SSERedis::diag_unfinished(@nodes); $_->stop for grep { defined } @nodes; $redis->stop if $redis }

# A: the default user's password; B: the ACL user; D: a wrong password; E: the ACL user with a
# wrong password. D and E retry quickly, so that several attempts fail within the 3 s watched.
my ($A) = $redis->nodes(1, server => $locations, url => $redis->url);
my ($B) = $redis->nodes(1, server => $locations, url => $redis->url(user => 'alice', password => 'alice-pw-9'));
my ($D) = $redis->nodes(1, server => $locations, url => $redis->url(password => 'wrong-pw'),
                        http => "    sse_redis_reconnect 100ms 400ms;\n");
my ($E) = $redis->nodes(1, server => $locations, url => $redis->url(user => 'alice', password => 'wrong-pw'),
                        http => "    sse_redis_reconnect 100ms 400ms;\n");
@nodes = ($A, $B, $D, $E);
my $t_started = time;

my $PRE = ":ok\n\n";

sub body_is {
    my ($s, $want, $label) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    $s->wait_body(length $want, 10);
    $s->drain(0.3) if length($s->body) == length $want;
    return is($s->body, $want, $label);
}

# --- (7) the right credentials: fan-out works -----------------------------------------------------
ok(SSERedis::wait_connected($A), 'A (redis://:password@) is connected');
ok(SSERedis::wait_connected($B), 'B (redis://alice:password@) is connected');
ok($redis->wait_clients(4), "CLIENT LIST: 4 sse- clients (A's and B's)");
my %user_of;
for (split /\n/, $redis->cli('CLIENT', 'LIST')) {
    my ($name) = /(?:^| )name=(sse-\S+)/ or next;
    my ($user) = / user=(\S+)/;
    $user_of{$name} = $user;
}
my @alice = grep { $user_of{$_} eq 'alice' } keys %user_of;
my @default = grep { $user_of{$_} eq 'default' } keys %user_of;
is(scalar @alice, 2, "B's two connections are authenticated as alice") or diag explain \%user_of;
is(scalar @default, 2, "A's two connections as the default user") or diag explain \%user_of;

{
    my $sa = $A->subscribe('/events?topics=auth');
    my $sb = $B->subscribe('/events?topics=auth');
    ok($redis->wait_numsub('sse:auth', 2), 'PUBSUB NUMSUB sse:auth is 2');
    my $e1 = $A->publish_event('/pub?topic=auth', 'from A');
    is($e1->[2]{redis}, 'forwarded', 'publish on A: forwarded');
    $sb->wait_body(length($PRE . $e1->[1]), 10);
    my $e2 = $B->publish_event('/pub?topic=auth', 'from B', 'b');
    is($e2->[2]{redis}, 'forwarded', 'publish on B: forwarded');
    # Another service, authenticated as alice.
    my $id3 = $redis->cli({auth => ['alice', 'alice-pw-9']}, 'FCALL', 'sse_publish', 1, 'sse:auth', 'from a service as alice');
    like($id3, qr/^\d+$/, 'FCALL sse_publish as alice answers an id');
    my $want = $PRE . frames($e1, $e2) . frame($id3, 'from a service as alice');
    body_is($sa, $want, "(7) A's stream: A's event, B's, the FCALL's, exactly");
    body_is($sb, $want, "(7) B's stream: the same");
    $sa->close;
    $sb->close;
}

# --- (7) a wrong password: one clear error, retries, local service goes on ------------------------
{
    # Watch for ~3 s of retries from the nodes' start.
    my $left = 3.5 - (time - $t_started);
    sleep $left if $left > 0;
    my $fail_default = $redis->auth_failures('default');
    my $fail_alice = $redis->auth_failures('alice');
    cmp_ok($fail_default, '>=', 3, "D kept retrying: Redis saw $fail_default failed AUTHs as default");
    cmp_ok($fail_alice, '>=', 3, "E kept retrying: Redis saw $fail_alice failed AUTHs as alice");

    for my $n ([D => $D], [E => $E]) {
        my ($name, $node) = @$n;
        my @err = SSERedis::log_lines($node, qr/sse: redis at 127\.0\.0\.1:$port refused authentication/);
        is(scalar @err, 1, "$name: one 'refused authentication' line, not one per attempt")
            or diag(join "\n", @err);
        like($err[0] // '', qr/\[error\] \d+#\d+: sse: redis at 127\.0\.0\.1:$port refused authentication: WRONGPASS invalid username-password pair or user is disabled\.?$/,
             "$name: the line is an [error] with Redis's message");
        my @flood = SSERedis::log_lines($node, qr/\[(?:notice|warn|error)\].*sse: redis/);
        cmp_ok(scalar @flood, '<=', 2, "$name: at most 2 notice-or-worse Redis lines") or diag(join "\n", @flood);
        my $st = $node->stats->{redis};
        isnt($st->{state}, 'connected', "$name: stats redis state is $st->{state}");

        # Local streams and publishes work.
        my $s = $node->subscribe('/events?topics=local');
        my $e = $node->publish_event('/pub?topic=local', "local on $name");
        is($e->[2]{redis}, 'queued', "$name: a publish answers 202 with \"redis\":\"queued\"");
        body_is($s, $PRE . $e->[1], "$name: its own stream gets the event at once");
        cmp_ok($node->stats->{redis}{queue}, '>=', 1, "$name: the event waits in the queue");
        $s->close;
    }
    is($redis->client_count, 4, 'no connection of D or E was ever named in Redis');
    # Still once after more failed attempts.
    my $before = $redis->auth_failures('default');
    sleep 1.5;
    cmp_ok($redis->auth_failures('default'), '>', $before, 'D still retries');
    is(scalar(SSERedis::log_lines($D, qr/refused authentication/)), 1, 'D: still a single refused-authentication line');
}

# --- a node whose link is cut (its user disabled) catches up from Redis when it is let back in -----
{
    my $sa = $A->subscribe('/events?topics=cut');
    my $sb = $B->subscribe('/events?topics=cut');
    ok($redis->wait_numsub('sse:cut', 2), 'cut: PUBSUB NUMSUB sse:cut is 2');
    my $e0 = $A->publish_event('/pub?topic=cut', 'before the cut');
    body_is($sb, $PRE . $e0->[1], "cut: B's stream gets A's event");

    is($redis->cli('ACL', 'SETUSER', 'alice', 'off'), 'OK', 'ACL SETUSER alice off');
    like($redis->cli('CLIENT', 'KILL', 'USER', 'alice'), qr/^[1-9]\d*$/, "CLIENT KILL USER alice: B's connections are cut");
    ok(SSERedis::wait_state($B, 'disconnected', 5), 'cut: B is disconnected');
    ok($redis->wait_numsub('sse:cut', 1), 'cut: PUBSUB NUMSUB sse:cut is 1');
    my @missed = map { $A->publish_event('/pub?topic=cut', "while B is out $_", $_ % 3 ? undef : 'third') } 1 .. 10;
    body_is($sa, $PRE . frames($e0, @missed), "cut: A's stream gets the 10 events");
    is($sb->body, $PRE . $e0->[1], "cut: B's stream got none of them meanwhile");
    ok(SSETest::wait_until(sub { SSERedis::log_lines($B, qr/refused authentication/) >= 1 }, 5),
       'cut: B logged that Redis refused it');

    is($redis->cli('ACL', 'SETUSER', 'alice', 'on'), 'OK', 'ACL SETUSER alice on');
    ok(SSERedis::wait_connected($B, 10), 'cut: B is connected again');
    body_is($sb, $PRE . frames($e0, @missed), "cut: B's stream gets the 10 events it missed, from Redis, in order, once");
    my $live = $A->publish_event('/pub?topic=cut', 'after the return');
    body_is($sb, $PRE . frames($e0, @missed, $live), "cut: then live events again");
    is(scalar(SSERedis::log_lines($B, qr/refused authentication/)), 1, 'cut: B logged the refusal once');
    $sa->close;
    $sb->close;
}

$_->finish for @nodes;
done_testing;
