# Batch publishing: a text/event-stream body holds several events, published in order with
# consecutive ids; id:, retry: and unknown fields are refused and publish nothing.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use Time::HiRes qw(time);
use SSETest;

my $t = SSETest->new(server => <<'CONF')->start;
        location = /events {
            sse_subscribe $arg_topics;
            sse_heartbeat off;
        }
        location = /pub {
            sse_publish $arg_topic;
        }
CONF

# If the test dies midway, stop nginx before File::Temp removes its directory (and pid file).
END { local $?; $t->stop if $t }

my $PRE = ":ok\n\n";
my $ES = {'Content-Type' => 'text/event-stream'};

my $s = $t->subscribe('/events?topics=batch');
is($s->wait_body(length $PRE), $PRE, 'stream opens');
my $seen = 0;

# Waits for the events up to id $last; returns the frames that arrived after those already seen.
sub new_frames {
    my ($last) = @_;
    my $end = time + 5;
    while (time < $end) {
        my @ev = $s->events;
        last if @ev > $seen && $ev[-1]{id} eq $last;
        my $have = @ev;
        $s->events($have + 1, 0.2);
    }
    my @ev = $s->events;
    my @new = @ev[$seen .. $#ev];
    $seen = @ev;
    return map { $_->{frame} } @new;
}

# Publishes a batch; checks the 202 JSON; returns (last id, frames received).
sub batch_ok {
    my ($body, $n, $label, %o) = @_;
    my $r = $t->request($o{method} // 'POST', '/pub?topic=batch' . ($o{query} // ''), body => $body,
                        headers => {%$ES, %{ $o{headers} || {} }});
    is($r->{status}, 202, "$label: 202") or diag($r->{body});
    like($r->{headers}{'content-type'} // '', qr{^application/json\b}, "$label: JSON answer");
    my $j = eval { decode_json($r->{body}) } || {};
    is($j->{events}, $n, "$label: events count");
    is($j->{subscribers}, 1, "$label: subscribers");
    like($j->{id} // '', qr/^\d+$/, "$label: last id");
    is_deeply([sort keys %$j], [qw(events id subscribers)], "$label: answer fields");
    return ($j->{id} // 0, new_frames($j->{id} // ''));
}

# Expected frames for ids ending at $last: each item [name or undef, data lines].
sub frames_for {
    my ($last, @items) = @_;
    my $id = $last - @items + 1;
    my @f;
    for my $it (@items) {
        my ($name, @lines) = @$it;
        my $f = 'id: ' . $id++ . "\n";
        $f .= "event: $name\n" if defined $name;
        $f .= join '', map { length $_ ? "data: $_\n" : "data:\n" } @lines;
        push @f, "$f\n";
    }
    return @f;
}

my $batch = join "\n",
    'event: order.created',
    'data: {"id":1}',
    '',
    'data: first line',
    'data: second line',
    'data:',
    'data: fourth after an empty one',
    '',
    'event: order.paid',
    'data:no space after the colon',
    'data:  two spaces keep one',
    '',
    '',
    '',
    'data: after several blank lines',
    'event: name.after.data',
    '';
my @want = ([ 'order.created', '{"id":1}' ],
            [ undef, 'first line', 'second line', '', 'fourth after an empty one' ],
            [ 'order.paid', 'no space after the colon', ' two spaces keep one' ],
            [ 'name.after.data', 'after several blank lines' ]);

{
    my ($last, @frames) = batch_ok($batch, 4, 'LF batch');
    is(scalar @frames, 4, 'LF batch: exactly 4 events arrived');
    is_deeply(\@frames, [frames_for($last, @want)], 'LF batch: exact frames, in order, consecutive ids');
}
{
    (my $crlf = $batch) =~ s/\n/\r\n/g;
    my ($last, @frames) = batch_ok($crlf, 4, 'CRLF batch');
    is(scalar @frames, 4, 'CRLF batch: exactly 4 events arrived');
    is_deeply(\@frames, [frames_for($last, @want)], 'CRLF batch: exact frames, in order, consecutive ids');
}
{
    (my $cr = $batch) =~ s/\n/\r/g;
    my ($last, @frames) = batch_ok($cr, 4, 'CR batch');
    is_deeply(\@frames, [frames_for($last, @want)], 'CR batch: exact frames');
}
{
    # No final blank line: the last event still counts; a charset parameter still means a batch.
    my ($last, @frames) = batch_ok("data: a\n\ndata: b", 2, 'batch without a final blank line',
                                   headers => {'Content-Type' => 'text/event-stream; charset=utf-8'});
    is_deeply(\@frames, [frames_for($last, [undef, 'a'], [undef, 'b'])], 'batch without a final blank line: frames');
}
{
    my ($last, @frames) = batch_ok("event: put\ndata: by PUT\n\n", 1, 'PUT batch', method => 'PUT');
    is_deeply(\@frames, [frames_for($last, ['put', 'by PUT'])], 'PUT batch: frame');
}
{
    # Ten events: ids consecutive, data in order.
    my $body = join '', map { "event: e$_\ndata: n$_\n\n" } 1 .. 10;
    my ($last, @frames) = batch_ok($body, 10, '10-event batch');
    is_deeply(\@frames, [frames_for($last, map { ["e$_", "n$_"] } 1 .. 10)], '10-event batch: exact frames');
}
{
    # Without the Content-Type the same text is the data of one event.
    my $r = $t->publish('/pub?topic=batch', "event: x\ndata: y");
    is($r->{events}, 1, 'without text/event-stream the body is one event');
    my @frames = new_frames($r->{id});
    is_deeply(\@frames, ["id: $r->{id}\ndata: event: x\ndata: data: y\n\n"], 'and is sent as data');
}

# --- Refusals: exact reasons, nothing published ---------------------------------------------
sub refused {
    my ($body, $reason, $label) = @_;
    my $r = $t->request('POST', '/pub?topic=batch', body => $body, headers => $ES);
    is($r->{status}, 400, "$label: 400");
    like($r->{headers}{'content-type'} // '', qr{^text/plain\b}, "$label: text/plain");
    if (ref $reason) {
        like($r->{body}, $reason, "$label: reason");
    } else {
        is($r->{body}, "$reason\n", "$label: exact reason");
    }
    my $m = $t->publish('/pub?topic=batch', "marker after $label");
    my @frames = new_frames($m->{id});
    is_deeply(\@frames, ["id: $m->{id}\ndata: marker after $label\n\n"],
              "$label: nothing published (the marker is the next event)");
}

refused("data: one\n\nid: 7\ndata: two\n\n", '"id:" on line 3: event ids are assigned by the server', 'id: in the second event');
refused("id: 1\ndata: x\n\n", '"id:" on line 1: event ids are assigned by the server', 'id: on line 1');
refused("data: a\r\n\r\nid:\r\ndata: b\r\n", '"id:" on line 3: event ids are assigned by the server', 'empty id: with CRLF');
refused("event: a\ndata: one\n\ndata: two\nretry: 5\n\n", qr/^"retry:" on line 5\b[^\n]*\n\z/, 'retry:');
refused("data: one\n\nfoo: bar\n\n", qr/^unknown field "foo" on line 3: [^\n]+\n\z/, 'unknown field foo');
refused("data: one\nx\n\n", qr/^unknown field "x" on line 2: [^\n]+\n\z/, 'field without a colon');
refused("data: one\nData: two\n\n", qr/^unknown field "Data" on line 2: [^\n]+\n\z/, 'field names are case-sensitive');
refused("", 'the batch holds no event', 'empty batch');
refused("\n\n\r\n", 'the batch holds no event', 'batch of blank lines');
refused("data: \xff\n\n", 'event data is not valid UTF-8', 'non-UTF-8 batch');

$s->drain(0.3);
is(scalar($s->events), $seen, 'no other event arrived');
$s->close;
$t->finish;
done_testing;
