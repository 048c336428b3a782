# sse_clients: listing every worker's streams (300 of them, paged by client id, filtered by
# channel and user, with the figures each was sent) and disconnecting exactly the streams asked
# for, by client id, by user and by channel. The config is docs/clients.md's, verbatim.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;

# From docs/clients.md ("Who is connected").
my $locations = <<'CONF';
        location = /events {
            sse_subscribe $arg_topics;
            sse_user $http_x_user;
            sse_heartbeat off;
        }
        location = /clients {
            allow 127.0.0.1;
            deny all;
            sse_clients;
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

# 300 streams over both workers: user u0..u9 (30 each), channels a (even) or a,b (odd).
my @paths = map { [ '/events?topics=' . ($_ % 2 ? 'a,b' : 'a'), headers => {'X-User' => 'u' . ($_ % 10)} ] } 0 .. 299;
my @s = $t->subscribe_spread(@paths);
my $st = $t->stats_until({subscribers => 300}, 10);
is($st->{subscribers}, 300, '300 streams open');
cmp_ok(scalar(grep { $_->{subscribers} > 0 } @{ $st->{workers} }), '>=', 2, 'on both workers');

sub get {
    my ($q) = @_;
    my $r = $t->request('GET', "/clients$q");
    return ($r->{status}, $r->{status} == 200 ? decode_json($r->{body}) : $r->{body});
}

# All 300 in pages of 100, ordered by client id, none twice.
my (@all, $after);
my $pages = 0;
while (1) {
    my ($status, $page) = get('?limit=100' . (defined $after ? "&after=$after" : ''));
    is($status, 200, "page " . ($pages + 1) . ': 200');
    last unless $status == 200;
    $pages++;
    is($page->{total}, 300, 'total 300');
    push @all, @{ $page->{clients} };
    $after = $page->{next};
    last unless defined $after;
    last if $pages > 5;
}
is($pages, 3, 'three pages of 100 (the third says next: null)');
is(scalar @all, 300, 'all 300 listed');
my %seen = map { $_->{client_id} => 1 } @all;
is(scalar keys %seen, 300, 'each once');
is_deeply([map { $_->{client_id} } @all], [sort { $a <=> $b } map { $_->{client_id} } @all], 'by client id');
my %workers = map { $_->{worker} => 1 } @all;
cmp_ok(scalar keys %workers, '>=', 2, 'listing spans both workers');
my ($c0) = grep { $_->{user} eq 'u3' } @all;
is($c0->{remote_addr}, '127.0.0.1', 'remote_addr');
ok($c0->{connected_at} > 1.7e9 && $c0->{connected_at} <= time, 'connected_at is a Unix time');
is_deeply($c0->{channels}, ['a', 'b'], 'channels as asked for (u3 is odd: a,b)');

# Filters.
my (undef, $ub) = get('?channel=b&limit=1000');
is($ub->{total}, 150, 'channel=b: 150');
is(scalar @{ $ub->{clients} }, 150, '150 listed');
my (undef, $u7) = get('?user=u7&limit=1000');
is($u7->{total}, 30, 'user=u7: 30');
ok(!grep({ $_->{user} ne 'u7' } @{ $u7->{clients} }), 'all of them u7');
my (undef, $one) = get("?id=$c0->{client_id}");
is_deeply([map { $_->{client_id} } @{ $one->{clients} }], [$c0->{client_id}], 'id=: that one');

# Figures: events and bytes sent to a stream.
my $e = $t->publish_event('/pub?topic=b', 'count me');
$_->wait_body(length($_->body) + 1, 5) for grep { $_->body !~ /count me/ } @s[1, 3];
# A worker writes its streams' figures to the zone at most half a second late.
SSETest::wait_until(sub {
    (undef, $one) = get("?id=$c0->{client_id}");
    $one->{clients}[0]{events_sent} == 1 && $one->{clients}[0]{bytes_sent} == length $e->[1];
}, 1.5);
is($one->{clients}[0]{events_sent}, 1, 'events_sent 1 after one event on b');
is($one->{clients}[0]{bytes_sent}, length $e->[1], 'bytes_sent: the frame\'s length');

# Bad requests.
for my $q ('?limit=0', '?limit=1001', '?id=abc', '?after=x', '?user=') {
    my ($status) = get($q);
    is($status, 400, "GET $q: 400");
}
is($t->request('DELETE', '/clients')->{status}, 400, 'DELETE without id, user or channel: 400');
is($t->request('POST', '/clients', body => 'x')->{status}, 405, 'POST: 405');

# Disconnect by id: exactly that stream ends.
my %by_id = map { $_->{client_id} => $_ } @all;
my $r = $t->request('DELETE', "/clients?id=$c0->{client_id}");
is(decode_json($r->{body})->{disconnected}, 1, 'DELETE id=: 1 disconnected');
$t->stats_until({subscribers => 299}, 5);
my (undef, $left) = get('?limit=1000');
is($left->{total}, 299, '299 left');
ok(!grep({ $_->{client_id} eq $c0->{client_id} } @{ $left->{clients} }), 'the one asked for is gone');

# By user: the 30 (29 now, if c0 was u3... it was) streams of u5.
$r = $t->request('DELETE', '/clients?user=u5');
is(decode_json($r->{body})->{disconnected}, 30, 'DELETE user=u5: 30');
$t->stats_until({subscribers => 269}, 5);
(undef, $left) = get('?limit=1000');
is($left->{total}, 269, '269 left');
ok(!grep({ $_->{user} eq 'u5' } @{ $left->{clients} }), 'no u5 left');

# By channel: every stream on b (odd users: u1, u3 (one gone), u7, u9; u5 gone).
my $on_b = grep { grep { $_ eq 'b' } @{ $_->{channels} } } @{ $left->{clients} };
$r = $t->request('DELETE', '/clients?channel=b');
is(decode_json($r->{body})->{disconnected}, $on_b, "DELETE channel=b: $on_b");
$st = $t->stats_until({subscribers => 269 - $on_b}, 5);
is($st->{subscribers}, 269 - $on_b, 'the rest stay');
(undef, $left) = get('?limit=1000');
ok(!grep({ grep { $_ eq 'b' } @{ $_->{channels} } } @{ $left->{clients} }), 'nobody on b left');
is($left->{total}, 150, 'the 150 even streams (channel a only) remain');

# Exactly the disconnected streams were closed: the odd ones (on b) and those of u5.
my @want_eof = map { ($_ % 2 || $_ % 10 == 5) ? 1 : 0 } 0 .. 299;
my @wrong = grep { ($s[$_]->wait_eof($want_eof[$_] ? 5 : 0.01) ? 1 : 0) != $want_eof[$_] } 0 .. 299;
is(scalar @wrong, 0, 'exactly the disconnected streams were closed by the server') or diag("wrong: @wrong[0 .. 9]");
$_->close for @s;
$t->finish;

# --- across nodes, with Redis: a disconnect or a DELETE asked of one node reaches every node ------
use SSERedis;
my $redis = SSERedis->new;
my @nodes = $redis->nodes(2, server => $locations);
my ($A, $B) = @nodes;
END { local $?; $_->stop for grep { defined } @nodes; $redis->stop if $redis }
ok(SSERedis::wait_connected($_), 'node :' . $_->port . ' connected') for @nodes;
my %streams;
for my $n ([A => $A], [B => $B]) {
    $streams{"$n->[0] zed"} = $n->[1]->subscribe('/events?topics=news', headers => {'X-User' => 'zed'});
    $streams{"$n->[0] amy"} = $n->[1]->subscribe('/events?topics=news', headers => {'X-User' => 'amy'});
    $streams{"$n->[0] x"} = $n->[1]->subscribe('/events?topics=x', headers => {'X-User' => 'kim'});
}
$_->stats_until({subscribers => 3}, 5) for $A, $B;

$r = $A->request('DELETE', '/clients?user=zed');
is_deeply(decode_json($r->{body}), {disconnected => 1, redis => 'forwarded'}, 'DELETE user=zed on A: 1 here, forwarded');
ok($streams{'B zed'}->wait_eof(5), "zed's stream on B is closed too");
ok($streams{'A zed'}->wait_eof(5), "and zed's on A");

$r = $B->request('DELETE', '/pub?topic=x');
is($r->{status}, 200, 'DELETE channel x on B: 200');
ok($streams{'A x'}->wait_eof(5), "A's stream on x is closed too");
ok($streams{'B x'}->wait_eof(5), "and B's");
ok(!$streams{"$_ amy"}->wait_eof(0.5), "amy on $_ stays") for qw(A B);
$_->stats_until({subscribers => 1}, 5) for $A, $B;
is($_->stats->{subscribers}, 1, 'node :' . $_->port . ': only amy left') for $A, $B;
$_->close for values %streams;
$_->finish for @nodes;
done_testing;
