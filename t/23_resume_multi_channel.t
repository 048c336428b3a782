# Resuming a stream on several channels: the replay holds every missed event of any of its
# channels exactly once (a publish to both channels at once counted once, a batch in order),
# in the original interleaving: byte for byte what a never-disconnected stream on the same
# channels received after the same id. Events of other channels are not replayed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use SSETest;
use SSEExpect qw(frame);

my $t = SSETest->new(server => <<'CONF')->start;
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

END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";

my @published;    # {id, frame, ch => {a => 1, ...}}
my $n = 0;

sub pub {
    my ($target) = @_;
    $n++;
    my $name = $n % 3 == 0 ? undef : "ev$n";
    my $data = "n=$n to $target" . ($n % 4 == 0 ? "\nsecond line" : '');
    my $r = $t->publish("/pub?topic=$target" . (defined $name ? "&event=$name" : ''), $data);
    is($r->{events}, 1, "publish $n to $target: one event");
    my %ch = map { $_ => 1 } split /,/, $target;
    push @published, {id => $r->{id}, frame => frame($r->{id}, $data, $name), ch => \%ch};
}

# A batch of 3 events to $target.
sub pub_batch {
    my ($target) = @_;
    my @items = map { $n++; ["batch n=$n", $_ == 2 ? undef : "b$n"] } 1 .. 3;
    my $body = join '', map { (defined $_->[1] ? "event: $_->[1]\n" : '') . "data: $_->[0]\n\n" } @items;
    my $r = $t->request('POST', "/pub?topic=$target", body => $body, headers => {'Content-Type' => 'text/event-stream'});
    is($r->{status}, 202, "batch to $target: 202");
    my $j = decode_json($r->{body});
    is($j->{events}, 3, "batch to $target: 3 events");
    my %ch = map { $_ => 1 } split /,/, $target;
    my $id = $j->{id} - 2;
    for my $it (@items) {
        push @published, {id => $id, frame => frame($id, $it->[0], $it->[1]), ch => {%ch}};
        $id++;
    }
}

# The frames of published events after $after on any of @channels.
sub expected {
    my ($after, @channels) = @_;
    return join '', map { $_->{frame} } grep {
        my $e = $_;
        $e->{id} > $after && grep { $e->{ch}{$_} } @channels
    } @published;
}

# The control stream's body from the first frame with id > $after.
sub control_after {
    my ($c, $after) = @_;
    my @ev = $c->events;
    return join '', map { $_->{frame} } grep { defined $_->{id} && $_->{id} > $after } @ev;
}

my $control = $t->subscribe('/events?topics=a,b');
my $s = $t->subscribe('/events?topics=a,b');
is($_->wait_body(length $PRE), $PRE, 'stream on a,b opens') for $control, $s;

pub($_) for 'a', 'b', 'a,b';
$s->wait_for_id($published[-1]{id});
is($s->body, $PRE . expected(0, 'a', 'b'), 'the stream that will disconnect got the first 3 events');
my $last_seen = ($s->events)[-1]{id};
$s->close;
ok(SSETest::wait_until(sub {
    my $j = $t->get_json('/pub?topic=a,b');
    2 == grep { $_->{subscribers} == 1 } @{ $j->{channels} };
}, 10), 'the disconnected stream is no longer counted');

# Missed: an interleaving of a, b, both at once, a channel the stream does not have, a batch.
pub($_) for 'a', 'b', 'a', 'a', 'b', 'a,b', 'c', 'b,a', 'a', 'c,a', 'b';
pub_batch('a,b');
pub($_) for 'a,b,c', 'c', 'b', 'a';
my $newest = $published[-1]{id};
$control->wait_for_id($newest);
is($control->body, $PRE . expected(0, 'a', 'b'), 'the control stream got every a and b event once, in order');

my $missed = expected($last_seen, 'a', 'b');
my $count_missed = () = $missed =~ /^id: /mg;
is($count_missed, 16, '16 events of a or b were missed');

my $r = $t->resume('/events?topics=a,b', $last_seen);
$r->wait_body(length($PRE . $missed), 10);
is($r->body, $PRE . control_after($control, $last_seen),
   'resume on a,b: exactly what the control stream received after the same id');
is($r->body, $PRE . $missed, 'resume on a,b: exactly the missed a and b events, in publish order');

# Resume from the middle, from an id of channel c only, on b alone, on the channels reversed.
my $mid = $published[8]{id};
my ($c_only) = grep { join(',', sort keys %{ $_->{ch} }) eq 'c' } @published;
my %more = (
    mid    => ['/events?topics=a,b', $mid, ['a', 'b']],
    c_only => ['/events?topics=a,b', $c_only->{id}, ['a', 'b']],
    b      => ['/events?topics=b', $last_seen, ['b']],
    ba     => ['/events?topics=b,a', $mid, ['a', 'b']],
    abc    => ['/events?topics=a,b,c', $last_seen, ['a', 'b', 'c']],
);
my %streams;
for my $k (sort keys %more) {
    my ($path, $id, $chs) = @{ $more{$k} };
    my $x = $t->resume($path, $id);
    my $want = $PRE . expected($id, @$chs);
    $x->wait_body(length $want, 10);
    is($x->body, $want, "resume $k ($path from $id): exactly the missed events of its channels");
    $streams{$k} = [$x, $id, $chs];
}
is($streams{mid}[0]->body, $PRE . control_after($control, $mid), 'resume from the middle equals the control stream');

# Live: everyone gets the next events once.
pub($_) for 'a', 'a,b', 'c', 'b';
my $last = $published[-1]{id};
$_->wait_for_id($last) for $control, $r, map { $_->[0] } values %streams;
is($control->body, $PRE . expected(0, 'a', 'b'), 'control: every event once, in order');
is($r->body, $PRE . expected($last_seen, 'a', 'b'), 'resumed a,b stream: replay then live, no gap, no duplicate');
for my $k (sort keys %streams) {
    my ($x, $id, $chs) = @{ $streams{$k} };
    is($x->body, $PRE . expected($id, @$chs), "resume $k: replay then live, no gap, no duplicate");
}

# Retained counts: per channel every event that targeted it; in the zone each event once.
my %per = (a => 0, b => 0, c => 0);
for my $e (@published) { $per{$_}++ for keys %{ $e->{ch} } }
my $g = $t->get_json('/pub?topic=a,b,c');
is_deeply([map { [$_->{channel}, $_->{retained}, $_->{oldest_id}, $_->{newest_id}] } @{ $g->{channels} }],
          [map { my $c = $_; my @ids = map { $_->{id} } grep { $_->{ch}{$c} } @published;
                 [$c, $per{$c}, $ids[0], $ids[-1]] } qw(a b c)],
          'GET a,b,c: each channel retains every event published to it');
my $st = $t->stats;
is($st->{events_retained}, scalar @published,
   'stats events_retained: ' . scalar(@published) . ' (an event of several channels counts once)');

$_->close for $control, $r, map { $_->[0] } values %streams;
$t->finish;
done_testing;
