use drainwatch::source::ftrace::PageLayout;

#[test]
fn page_header_layout_is_read_from_tracefs() {
    let text = include_str!("fixtures/tracefs/header_page");
    let layout = PageLayout::parse(text).unwrap();
    assert_eq!(layout.commit.offset, 8);
    assert_eq!(layout.data_offset, 16);
}

#[test]
fn a_field_offset_no_page_can_hold_is_refused_not_added() {
    // Found by the ftrace fuzz target: an offset near usize::MAX overflowed `offset + size`.
    let text = include_str!("fixtures/tracefs/header_page")
        .replace("offset:8;\tsize:8", "offset:18446744073709551615;\tsize:8");
    let err = PageLayout::parse(&text).unwrap_err().to_string();
    assert!(err.contains("commit"), "{err}");
    let text = include_str!("fixtures/tracefs/header_page").replace("size:4080", "size:65537");
    assert!(PageLayout::parse(&text).is_err());
}
