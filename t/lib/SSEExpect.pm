package SSEExpect;

# What a stream should receive, as exact bytes, and where what it received first differs from that.
#
#   use SSEExpect qw(frame reset_frame frames first_difference);
#   is($s->body, ":ok\n\n" . reset_frame($x, 'evicted') . frames(@events), '...');

use strict;
use warnings;

use Exporter 'import';
our @EXPORT_OK = qw(frame reset_frame frames first_difference);

# The exact frame of an event: its id, its name when defined, one data line per line of $data.
sub frame {
    my ($id, $data, $name) = @_;
    my $f = "id: $id\n";
    $f .= "event: $name\n" if defined $name;
    $f .= join '', map { length $_ ? "data: $_\n" : "data:\n" } split /\n/, $data, -1;
    return "$f\n";
}

# The exact reset event for the position $x (as the client gave it) and $reason, named $name (default reset).
sub reset_frame {
    my ($x, $reason, $name) = @_;
    return 'event: ' . ($name // 'reset') . qq(\ndata: {"last_event_id":"$x","reason":"$reason"}\n\n);
}

# The frames of published events ([id, frame, ...] each, as SSETest::publish_event returns them), joined.
sub frames { join '', map { $_->[1] } @_ }

# Where the lists @$got and @$want first differ, elements compared as strings by $show (default: the
# element, undef as ''): undef when equal, else a diag text with the lengths, the index, and both lists around it.
sub first_difference {
    my ($got, $want, $show) = @_;
    $show //= sub { $_[0] // '' };
    my @g = map { $show->($_) } @$got;
    my @w = map { $show->($_) } @$want;
    my $n = @g > @w ? @g : @w;
    for my $i (0 .. $n - 1) {
        next if $i < @g && $i < @w && $g[$i] eq $w[$i];
        my $at = sub { my ($l, $j) = @_; return $j < @$l ? $l->[$j] : '(none)' };
        my $around = sub { my ($l) = @_; return join '', map { "\n  $l->[$_]" } grep { $_ >= 0 && $_ < @$l } $i - 3 .. $i + 3 };
        return sprintf "got %d, want %d; first difference at %d: got %s, want %s\naround it, got:%s\naround it, want:%s",
            scalar @g, scalar @w, $i, $at->(\@g, $i), $at->(\@w, $i), $around->(\@g), $around->(\@w);
    }
    return undef;
}

1;
