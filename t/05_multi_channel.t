# Streams on several channels: each event once, in publish order, whatever mix of channels a
# publish targets; other streams get exactly their channels' events; the "subscribers" figure.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time);
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /hevents {
            sse_subscribe $http_x_channels;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
        location = /stats {
            sse_stats;
        }
CONF

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

# Streams and the channels each listens to (after trimming and collapsing duplicates).
my %subs = (
    abc  => [$t->subscribe('/events?topics=a,b,c'), [qw(a b c)]],
    b    => [$t->subscribe('/events?topics=b'), [qw(b)]],
    ab   => [$t->subscribe('/hevents', headers => {'X-Channels' => ' a ,b, a ,,b '}), [qw(a b)]],
    cdup => [$t->subscribe('/events?topics=c,c,c'), [qw(c)]],
);
for my $k (sort keys %subs) {
    my $s = $subs{$k}[0];
    is($s->status, 200, "stream $k opens");
    is($s->wait_body(length $PRE), $PRE, "stream $k: preamble");
}

my %count = (a => 2, b => 3, c => 2, x => 0, y => 0);
ok(SSETest::wait_until(sub { $t->get_json('/stats')->{subscribers} == 4 }, 5), 'stats: 4 subscribers');
{
    my $st = $t->get_json('/pub?topic=a,b,c');
    is_deeply($st->{channels} && [map { [$_->{channel}, $_->{subscribers}] } @{ $st->{channels} }],
              [[a => 2], [b => 3], [c => 2]], 'GET of several channels: each with its subscribers');
}

# The publishes: the named ones first, then a deterministic pseudo-random interleaving.
my @targets = ('a', 'b', 'c', 'a,b', 'b,c,a', 'x', 'c', 'a,x', 'c,b', 'b', 'a', 'x,y', 'c,a', 'a,a,b', 'b,b', 'x,c');
my $seed = 12345;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed % $_[0] }
my @pool = qw(a b c x);
for (1 .. 40) {
    my %pick;
    $pick{ $pool[rnd(4)] } = 1 for 0 .. rnd(3);
    push @targets, join ',', sort { rnd(2) ? -1 : 1 } keys %pick;
}

my @published;    # [id, frame, {channel => 1}]
my $n = 0;
for my $target (@targets) {
    $n++;
    my %ch = map { $_ => 1 } split /,/, $target;
    my $name = $n % 3 ? "ev.$n" : undef;
    my $r = $t->publish("/pub?topic=$target" . (defined $name ? "&event=$name" : ''), "payload $n\nfor $target");
    my $want = 0;
    $want += $count{$_} for keys %ch;
    is($r->{subscribers}, $want, "publish $n to $target: subscribers $want");
    is($r->{events}, 1, "publish $n to $target: one event");
    my $frame = "id: $r->{id}\n" . (defined $name ? "event: $name\n" : '') . "data: payload $n\ndata: for $target\n\n";
    push @published, [$r->{id}, $frame, \%ch];
    # Read a little now and then, so delivery interleaves with publishing.
    $_->[0]->_fill(0) for values %subs;
}
cmp_ok($published[$_][0], '>', $published[$_ - 1][0], 'ids increase') for 1 .. $#published;

for my $k (sort keys %subs) {
    my ($s, $chans) = @{ $subs{$k} };
    my @want = grep { my $p = $_; grep { $p->[2]{$_} } @$chans } @published;
    $s->events(scalar @want, 10);
    $s->drain(0.3);
    my @got = $s->events;
    is(scalar @got, scalar @want, "stream $k: exactly " . scalar(@want) . ' events');
    is_deeply([map { $_->{id} } @got], [map { $_->[0] } @want], "stream $k: the right ids, once each, in order");
    is_deeply([map { $_->{frame} } @got], [map { $_->[1] } @want], "stream $k: exact frames");
    is($s->body, $PRE . join('', map { $_->[1] } @want), "stream $k: exact body");
    ok(!$s->eof, "stream $k still open");
}

for my $k (sort keys %subs) { $subs{$k}[0]->close }
ok(SSETest::wait_until(sub { $t->get_json('/stats')->{subscribers} == 0 }, 5), 'stats: no subscriber left');
$t->finish;
done_testing;
