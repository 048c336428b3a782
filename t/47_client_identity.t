# Client identity and per-user routing: every stream has a client id, told to it by the
# connected event; sse_publish_client reaches that one stream and sse_publish_user every stream
# of one user key, on whichever worker they are (and, with Redis, on whichever node); DELETE on
# those locations disconnects exactly those streams. The config is docs/clients.md's, verbatim.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;
use SSERedis;
use SSEExpect qw(frame frames);

# From docs/clients.md ("Client identity and per-user routing"); the user key comes from a header
# here, which auth_request_set would set in production.
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_user $http_x_user;            # e.g. set by auth_request_set from your auth service
            sse_client_channel on;
            sse_connected_event connected;
            sse_heartbeat off;
        }
        location = /to-client {              # internal or access-restricted in production
            sse_publish_client $arg_id;
        }
        location = /to-user {
            sse_publish_user $arg_user;
        }
        location = /stats {
            sse_stats;
        }
CONF

my $t = SSETest->new(spread => 1, server => $locations)->start;
END { local $?; $t->stop if $t }
my $PRE = ":ok\n\n";

sub connected_frame {
    my ($id, $user) = @_;
    my $data = qq({"client_id":"$id") . (defined $user ? qq(,"user":"$user") : '') . '}';
    return "event: connected\ndata: $data\n\n";
}

# 6 streams over both workers: alice x3, bob x2, one without a user.
my @who = (qw(alice alice alice bob bob), undef);
my @s = $t->subscribe_spread(map { [ '/events?topics=news', defined $_ ? (headers => {'X-User' => $_}) : () ] } @who);
my @ids;
for my $i (0 .. $#s) {
    $s[$i]->wait_body(length($PRE) + 30, 5);
    $s[$i]->drain(0.1);
    my ($id) = $s[$i]->body =~ /"client_id":"(\d+)"/;
    push @ids, $id;
    is($s[$i]->body, $PRE . connected_frame($id // 'none', $who[$i]),
       "stream $i: the connected event, exactly, with its client id" . (defined $who[$i] ? " and user $who[$i]" : ''));
}
my %distinct = map { ($_ // '') => 1 } @ids;
is(scalar keys %distinct, 6, 'six distinct client ids');
is($t->stats->{users}, 2, 'stats: 2 users with streams (alice, bob)');
like($t->request('GET', '/stats?format=prometheus')->{body}, qr/^sse_users 2$/m, 'Prometheus: sse_users 2');
my @base = map { $_->body } @s;

sub bodies_after {
    my (%want) = @_;    # index => appended bytes
    for my $i (0 .. $#s) {
        my $expect = $base[$i] . ($want{$i} // '');
        $s[$i]->wait_body(length $expect, 5) if $want{$i};
        $s[$i]->drain(0.2);
        is($s[$i]->body, $expect, "stream $i: " . ($want{$i} ? 'got it, once' : 'got nothing'));
    }
    @base = map { $_->body } @s;
}

# One client: alice's second stream only.
my $e1 = $t->publish_event("/to-client?id=$ids[1]", 'just you', 'note');
is($e1->[2]{subscribers}, 1, 'publish to one client: 1 subscriber');
bodies_after(1 => $e1->[1]);

# One user: alice's three streams, on both workers.
my $e2 = $t->publish_event('/to-user?user=alice', '{"balance":12}', 'wallet');
is($e2->[2]{subscribers}, 3, 'publish to alice: 3 subscribers');
bodies_after(0 => $e2->[1], 1 => $e2->[1], 2 => $e2->[1]);

my $e3 = $t->publish_event('/to-user?user=bob', 'hi bob');
bodies_after(3 => $e3->[1], 4 => $e3->[1]);

# Several users, several clients in one publish: each stream once.
my $e3b = $t->publish_event('/to-user?user=alice,bob', 'to alice and bob');
is($e3b->[2]{subscribers}, 5, 'publish to alice,bob: 5 streams');
bodies_after(map { ($_ => $e3b->[1]) } 0 .. 4);
my $e3c = $t->publish_event("/to-client?id=$ids[0],$ids[5]", 'to two clients');
is($e3c->[2]{subscribers}, 2, 'publish to two client ids: 2 streams');
bodies_after(0 => $e3c->[1], 5 => $e3c->[1]);

# Nobody there: accepted, nobody reached. Bad targets: 400.
is($t->publish('/to-client?id=12345', 'x')->{subscribers}, 0, 'an unknown client id: 202, 0 subscribers');
is($t->publish('/to-user?user=carol', 'x')->{subscribers}, 0, 'an unknown user: 202, 0 subscribers');
my $r = $t->request('POST', '/to-client?id=abc', body => 'x');
is($r->{status}, 400, 'a client id that is not a number: 400');
like($r->{body}, qr/client id is a decimal number/, 'with a reason');
$r = $t->request('POST', '/to-user?user=', body => 'x');
is($r->{status}, 400, 'an empty user key: 400');
bodies_after();

# DELETE disconnects exactly those streams: one client, then one user.
$r = $t->request('DELETE', "/to-client?id=$ids[5]");
is($r->{status}, 200, 'DELETE a client: 200');
is(decode_json($r->{body})->{closed_subscribers}, 1, 'it closed 1 stream');
$s[5]->wait_eof(5) if $s[5]->can('wait_eof');
$r = $t->request('DELETE', '/to-user?user=bob');
is(decode_json($r->{body})->{closed_subscribers}, 2, 'DELETE user bob: closed 2 streams');
my $st = $t->stats_until({subscribers => 3}, 5);
is($st->{subscribers}, 3, "alice's 3 streams remain");
is($st->{users}, 1, 'stats: 1 user with streams');
my $e4 = $t->publish_event('/to-user?user=alice', 'still here');
for my $i (0 .. 2) {
    $s[$i]->wait_body(length($base[$i] . $e4->[1]), 5);
    is($s[$i]->body, $base[$i] . $e4->[1], "alice's stream $i still live");
}
$_->close for @s;
$t->finish;

# --- across nodes, with Redis ------------------------------------------------------------------
my $redis = SSERedis->new;
my @nodes = $redis->nodes(2, server => $locations);
my ($A, $B) = @nodes;
END { local $?; $_->stop for grep { defined } @nodes; $redis->stop if $redis }
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;
my $ua = $A->subscribe('/events?topics=news', headers => {'X-User' => 'dora'});
my $ub = $B->subscribe('/events?topics=news', headers => {'X-User' => 'dora'});
my $ob = $B->subscribe('/events?topics=news', headers => {'X-User' => 'eve'});
my %id;
for ([a => $ua], [b => $ub], [o => $ob]) {
    $_->[1]->wait_body(length($PRE) + 30, 5);
    $_->[1]->drain(0.1);
    ($id{ $_->[0] }) = $_->[1]->body =~ /"client_id":"(\d+)"/;
}
isnt($id{a}, $id{b}, 'client ids differ across nodes');
ok($redis->wait_numsub("sse:#u:dora", 2), 'both nodes listen to user dora in Redis');
ok($redis->wait_numsub("sse:#c:$id{b}", 1), "B listens to its client's channel in Redis");
my @before = map { $_->body } $ua, $ub, $ob;

my $x1 = $A->publish_event("/to-client?id=$id{b}", 'to a client on the other node');
my $x2 = $A->publish_event('/to-user?user=dora', 'to dora everywhere');
$ua->wait_body(length($before[0] . $x2->[1]), 5);
$ub->wait_body(length($before[1] . $x1->[1] . $x2->[1]), 5);
$_->drain(0.3) for $ua, $ub, $ob;
is($ua->body, $before[0] . $x2->[1], "dora on A: the user event only");
is($ub->body, $before[1] . $x1->[1] . $x2->[1], "dora on B: the client event published on A, then the user event");
is($ob->body, $before[2], 'eve on B: nothing');
$_->close for $ua, $ub, $ob;
$_->finish for @nodes;
done_testing;
